"""The figures of a load step: the schedule, a mergeable latency histogram, one step's result
and the rule that ends the climb to saturation. Pure: no I/O, no clock.

Latency is measured from each request's *scheduled* send time (request ``i`` of a step at
``t0 + i / rate``), not from when it was written: a server that stalls makes every request
scheduled during the stall late, and that lateness is the latency a user would see. Timing
from the write instead is what a closed loop does, and it reports one slow request where
there were hundreds ("coordinated omission"); it is kept as ``service`` latency, to show the
difference.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MIN_RATIO",
    "MIN_SUCCESS",
    "LatencyHistogram",
    "StepResult",
    "climb",
    "requests_in",
    "saturated",
    "scheduled_at",
]

#: A step reached saturation when it achieved less than this share of the offered rate...
MIN_RATIO = 0.95
#: ...or when fewer of its requests than this share succeeded.
MIN_SUCCESS = 0.99
#: The climb past the listed rates: this rate, then this much more at each step.
CLIMB_FROM = 5000.0
CLIMB_STEP = 5000.0
CLIMB_MAX = 100_000.0


def scheduled_at(t0: float, i: int, rate: float) -> float:
    """When request ``i`` (from 0) of a step that starts at ``t0`` is due: a fixed schedule,
    whatever the answers do (an open loop)."""
    return t0 + i / rate


def requests_in(rate: float, duration: float) -> int:
    """How many requests a step of ``duration`` seconds at ``rate`` sends (at least one)."""
    return max(1, round(rate * duration))


def saturated(result: StepResult) -> bool:
    """Whether the target could not keep up with the step's offered rate."""
    return result.rps < MIN_RATIO * result.offered or result.success_rate < MIN_SUCCESS


def climb(after: float) -> Iterator[float]:
    """The rates tried once the listed ones are done: from ``CLIMB_FROM`` (or the first step
    above ``after``) up by ``CLIMB_STEP``, to ``CLIMB_MAX``."""
    rate = CLIMB_FROM
    while rate <= after:
        rate += CLIMB_STEP
    while rate <= CLIMB_MAX:
        yield rate
        rate += CLIMB_STEP


# -- the histogram -------------------------------------------------------------------------

#: Microseconds are counted exactly below this; above, in 64 buckets per power of two (a
#: value is off by at most 1/128 of itself once reported as its bucket's midpoint).
_EXACT = 128
_SUB_BITS = 6
_SUB = 1 << _SUB_BITS


def bucket_of(us: int) -> int:
    """The bucket index of a value in whole microseconds."""
    if us < _EXACT:
        return max(0, us)
    shift = us.bit_length() - _SUB_BITS - 1  # what is left keeps 7 bits: 64..127
    return _EXACT + (shift - 1) * _SUB + ((us >> shift) - _SUB)


def bucket_value(index: int) -> float:
    """The midpoint (microseconds) of bucket ``index``."""
    if index < _EXACT:
        return float(index)
    shift, sub = divmod(index - _EXACT, _SUB)
    shift += 1
    low = (sub + _SUB) << shift
    return low + ((1 << shift) - 1) / 2


@dataclass
class LatencyHistogram:
    """Latencies in log-linear buckets: bounded in size however long the run, and merged by
    adding counts (the generator processes each keep one)."""

    counts: Counter[int] = field(default_factory=Counter)
    count: int = 0
    total_us: float = 0.0
    max_us: float = 0.0

    def record(self, seconds: float) -> None:
        us = seconds * 1e6
        self.counts[bucket_of(int(us))] += 1
        self.count += 1
        self.total_us += us
        if us > self.max_us:
            self.max_us = us

    def merge(self, other: LatencyHistogram) -> None:
        self.counts.update(other.counts)
        self.count += other.count
        self.total_us += other.total_us
        self.max_us = max(self.max_us, other.max_us)

    def percentile(self, q: float) -> float:
        """The ``q`` quantile (0..1) in seconds: the value at rank ``ceil(q * count)``
        (never above the largest value recorded); 0 when empty."""
        if self.count == 0:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return min(bucket_value(index), self.max_us) / 1e6
        return self.max_us / 1e6

    @property
    def mean(self) -> float:
        """Seconds; 0 when empty."""
        return self.total_us / self.count / 1e6 if self.count else 0.0

    def figures_ms(self) -> dict[str, float]:
        """avg, p50, p95, p99 and max in milliseconds."""
        return {
            "avg": round(self.mean * 1e3, 3),
            "p50": round(self.percentile(0.50) * 1e3, 3),
            "p95": round(self.percentile(0.95) * 1e3, 3),
            "p99": round(self.percentile(0.99) * 1e3, 3),
            "max": round(self.max_us / 1e3, 3),
        }


# -- one step ------------------------------------------------------------------------------


@dataclass
class StepResult:
    """What one step (one target at one offered rate) measured; the parts a generator
    process measured merge into one.

    ``elapsed`` runs from the first scheduled send to the end of the schedule, or to the
    last answer if that came later: a target that falls behind stretches it (its backlog
    drains after the schedule ends), so ``rps`` drops below the offered rate.
    """

    target: str
    offered: float
    duration: float
    scheduled: int = 0
    responses: int = 0
    ok: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    sources: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    service: LatencyHistogram = field(default_factory=LatencyHistogram)
    #: How late the generator wrote requests that found a free connection: its own error.
    send_lag: LatencyHistogram = field(default_factory=LatencyHistogram)
    elapsed: float = 0.0
    processes: int = 1

    def merge(self, other: StepResult) -> None:
        self.scheduled += other.scheduled
        self.responses += other.responses
        self.ok += other.ok
        self.statuses.update(other.statuses)
        self.sources.update(other.sources)
        self.errors.update(other.errors)
        self.latency.merge(other.latency)
        self.service.merge(other.service)
        self.send_lag.merge(other.send_lag)
        self.elapsed = max(self.elapsed, other.elapsed)

    @classmethod
    def merged(cls, parts: Sequence[StepResult]) -> StepResult:
        first = parts[0]
        total = cls(first.target, first.offered, first.duration, processes=len(parts))
        for part in parts:
            total.merge(part)
        return total

    @property
    def failed(self) -> int:
        return self.scheduled - self.ok

    @property
    def rps(self) -> float:
        """Answers (any status) per second over ``elapsed``."""
        return self.responses / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def success_rate(self) -> float:
        """The share of scheduled requests answered 2xx."""
        return self.ok / self.scheduled if self.scheduled else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Every figure, for ``--json``; latencies in milliseconds."""
        return {
            "target": self.target,
            "offered_rps": self.offered,
            "duration_s": self.duration,
            "scheduled": self.scheduled,
            "responses": self.responses,
            "ok": self.ok,
            "failed": self.failed,
            "rps": round(self.rps, 1),
            "success_rate": round(self.success_rate, 6),
            "saturated": saturated(self),
            "latency_ms": self.latency.figures_ms(),
            "service_time_ms": self.service.figures_ms(),
            "send_lag_ms": self.send_lag.figures_ms(),
            "statuses": dict(self.statuses),
            "sources": dict(self.sources),
            "errors": dict(self.errors),
            "elapsed_s": round(self.elapsed, 3),
            "processes": self.processes,
        }
