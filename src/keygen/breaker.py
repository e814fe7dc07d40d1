"""A circuit breaker per layer, so a dead backend costs a request nothing but a flag check."""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"  # requests go through
    OPEN = "open"  # requests skip this layer until the reset timeout has passed
    HALF_OPEN = "half_open"  # one probe request goes through; its outcome decides


class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive failures; probes again after a pause.

    While half-open exactly one request (the probe) is let through; its success closes the
    breaker, its failure opens it for another ``reset_timeout`` seconds.
    """

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
        self._probing = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._probing or self._clock() - self._opened_at >= self.reset_timeout:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        """Whether a request may try this layer now; a True in half-open state is the probe."""
        if self._opened_at is None:
            return True
        if self._probing or self._clock() - self._opened_at < self.reset_timeout:
            return False
        self._probing = True
        return True

    def record_success(self) -> None:
        self._failures = 0
        if self._opened_at is not None:
            self.closed_count += 1
        self._opened_at = None
        self._probing = False

    def record_failure(self) -> None:
        self._failures += 1
        if self._probing or self._failures >= self.failure_threshold:
            if self._opened_at is None:
                self.opened_count += 1
            self._opened_at = self._clock()
            self._probing = False

    def abandon_probe(self) -> None:
        """The request let through was cancelled before its outcome: let another probe."""
        self._probing = False

    def retry_after(self) -> float:
        """Seconds until this layer will be tried again (0 when it would be tried now)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.reset_timeout - self._clock())
