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


def state_of(breaker: CircuitBreaker) -> BreakerState:
    """The breaker's state read afresh (mypy would keep what an earlier assert narrowed)."""
    return breaker.state


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


def test_no_request_is_a_probe() -> None:
    """Past the reset timeout the breaker is half-open, yet still lets no request through."""
    breaker, clock = make(threshold=1, reset=2.0)
    breaker.record_failure()
    clock.now += 2.0
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow()


def test_a_successful_probe_closes_once_the_reset_timeout_passed() -> None:
    """A probe answered before the reset timeout changes nothing; after it, it closes."""
    breaker, clock = make(threshold=1, reset=2.0)
    breaker.record_failure()
    clock.now += 1.0
    breaker.probe_succeeded()
    assert breaker.state is BreakerState.OPEN
    clock.now += 1.0
    breaker.probe_succeeded()
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.allow() and breaker.closed_count == 1


def test_a_failed_probe_keeps_it_open_for_a_full_timeout() -> None:
    """A failed probe opens the breaker again, counting from the probe's failure."""
    breaker, clock = make(threshold=1, reset=2.0)
    breaker.record_failure()
    clock.now += 2.0
    breaker.probe_failed()
    assert breaker.state is BreakerState.OPEN
    clock.now += 1.0
    breaker.probe_succeeded()
    assert breaker.state is BreakerState.OPEN
    clock.now += 1.0
    breaker.probe_succeeded()
    assert state_of(breaker) is BreakerState.CLOSED


def test_a_served_request_does_not_close_an_open_breaker() -> None:
    """Only a probe closes it: a late success of an attempt begun before it opened does not."""
    breaker, clock = make(threshold=1)
    breaker.record_failure()
    clock.now += 5
    breaker.record_success()
    assert not breaker.allow()
