"""A circuit breaker per layer, so a dead backend costs a request nothing but a flag check.

No user request is ever a probe: while the breaker is open every request skips the layer,
and the background probe (``probes.py``) closes it as soon as the layer answers a real
operation again. A request that arrives the moment the layer is back is therefore served by
it, not by a later layer, and nobody pays for finding out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"  # requests go through
    OPEN = "open"  # requests skip this layer; probes may not close it before the reset timeout
    HALF_OPEN = "half_open"  # requests still skip it; the next successful probe closes it


class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive failures (a request that stalls counts
    as one); a successful probe closes it once ``reset_timeout`` has passed since it opened
    (or since its last failed probe)."""

    def __init__(
        self,
        *,
        failure_threshold: int = 3,
        reset_timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.opened_count = 0  # transitions from closed to open, for metrics
        self.closed_count = 0  # transitions back to closed (recoveries), for metrics
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self.reset_timeout:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        """Whether a request may try this layer now."""
        return self._opened_at is None

    def record_success(self) -> None:
        """A request was served: consecutive failures start over. (It does not close an
        open breaker: only a probe does.)"""
        self._failures = 0

    def record_failure(self) -> None:
        self._failures += 1
        if self._opened_at is None and self._failures >= self.failure_threshold:
            self.opened_count += 1
            self._opened_at = self._clock()

    def probe_succeeded(self) -> None:
        """The background probe found the layer answering: close, if it has been open long
        enough for one answer to mean something."""
        if self.state is BreakerState.HALF_OPEN:
            self._opened_at = None
            self._failures = 0
            self.closed_count += 1

    def probe_failed(self) -> None:
        """The probe found the layer still failing: stay open for another reset timeout."""
        if self._opened_at is not None:
            self._opened_at = self._clock()

    def retry_after(self) -> float:
        """Seconds until this layer may serve again at the earliest (0 when it may now)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.reset_timeout - self._clock())
