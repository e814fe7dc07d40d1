"""The circuit breaker's state machine, on a controlled clock."""

from __future__ import annotations

from keygen.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(threshold: int = 3, reset: float = 2.0) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker(failure_threshold=threshold, reset_timeout=reset, clock=clock), clock


def test_stays_closed_below_threshold() -> None:
    """Fewer consecutive failures than the threshold keep the breaker closed."""
    breaker, _ = make(threshold=3)
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()


def test_success_resets_the_failure_count() -> None:
    """Only consecutive failures count: a success in between starts over."""
    breaker, _ = make(threshold=2)
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED


def test_opens_at_threshold_and_rejects() -> None:
    """At the threshold the breaker opens and lets nothing through until the reset timeout."""
    breaker, clock = make(threshold=2, reset=2.0)
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    clock.now += 1.9
    assert not breaker.allow()
    assert abs(breaker.retry_after() - 0.1) < 1e-9
    assert breaker.opened_count == 1


def test_half_open_lets_exactly_one_probe() -> None:
    """After the reset timeout one probe goes through; others wait for its outcome."""
    breaker, clock = make(threshold=1, reset=2.0)
    breaker.record_failure()
    clock.now += 2.0
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()
    assert not breaker.allow()
    assert breaker.state is BreakerState.HALF_OPEN


def test_successful_probe_closes() -> None:
    """A successful probe closes the breaker."""
    breaker, clock = make(threshold=1)
    breaker.record_failure()
    clock.now += 5
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow() and breaker.allow()


def test_failed_probe_reopens_for_a_full_timeout() -> None:
    """A failed probe opens the breaker again, counting from the probe's failure."""
    breaker, clock = make(threshold=1, reset=2.0)
    breaker.record_failure()
    clock.now += 2.0
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.now += 1.0
    assert not breaker.allow()
    clock.now += 1.0
    assert breaker.allow()


def test_abandoned_probe_lets_another_probe() -> None:
    """A probe cancelled before its outcome does not wedge the breaker half-open."""
    breaker, clock = make(threshold=1)
    breaker.record_failure()
    clock.now += 5
    assert breaker.allow()
    breaker.abandon_probe()
    assert breaker.allow()
