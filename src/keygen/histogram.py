"""A histogram of durations with fixed bounds, and quantiles estimated from its buckets.

The quantile is estimated the way Prometheus's ``histogram_quantile`` does (linear within the
bucket it falls in), so the figure the service shows and the one a Prometheus server
computes from the same buckets agree.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

__all__ = ["REFILL_BUCKETS", "Histogram", "quantile"]

#: Upper bounds (seconds) of the lease-refill duration histograms.
REFILL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Counts of observations per bucket (``counts[i]``: at most ``bounds[i]``, the last one
    above every bound) and their sum."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


def quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> float | None:
    """The ``q`` quantile (0..1) of the observations counted per bucket; None without any.

    ``counts`` are per bucket (not cumulative), one more than ``bounds`` (the +Inf bucket).
    A quantile in the +Inf bucket is reported as the highest bound, as Prometheus does.
    """
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            if i == len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i > 0 else 0.0
            return lower + (bounds[i] - lower) * (rank - seen) / count
        seen += count
    return bounds[-1]
