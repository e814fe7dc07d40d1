"""The allocator's layering, time budget and breakers, over scripted fake layers."""

from __future__ import annotations

import asyncio
import time

import pytest

from keygen.allocator import Allocator, Layer
from keygen.breaker import BreakerState, CircuitBreaker
from keygen.constants import SOURCE_POSTGRESQL, SOURCE_REDIS
from keygen.dispensers.segments import SegmentDispenser
from keygen.errors import NamespaceExhausted, ServiceUnavailable
from keygen.metrics import Counters
from keygen.metrics.counters import read_instance
from tests.support.fakes import FakeDispenser

pytestmark = pytest.mark.anyio


def make(
    *dispensers: FakeDispenser,
    timeout: float = 1.0,
    layer_timeout: float = 1.0,
    threshold: int = 1,
    reset: float = 60.0,
) -> Allocator:
    layers = [
        Layer(d, CircuitBreaker(failure_threshold=threshold, reset_timeout=reset), layer_timeout)
        for d in dispensers
    ]
    return Allocator(layers, timeout=timeout, metrics=Counters())


async def test_first_layer_serves_and_is_reported() -> None:
    """A healthy first layer serves, and the allocation names it as the source."""
    primary, fallback = FakeDispenser("primary"), FakeDispenser("fallback", start=10**9)
    allocation = await make(primary, fallback).allocate("default", 10)
    assert allocation.source == "primary"
    assert (allocation.range.start, allocation.range.end) == (1, 10)
    assert fallback.calls == 0


async def test_failing_layer_falls_back() -> None:
    """A layer that raises LayerUnavailable is skipped for the next one."""
    primary, fallback = FakeDispenser("primary"), FakeDispenser("fallback")
    primary.mode = "fail"
    allocation = await make(primary, fallback).allocate("default", 5)
    assert allocation.source == "fallback"


async def test_unexpected_exception_falls_back_instead_of_500() -> None:
    """A bug in a layer (any exception) is treated as that layer failing."""
    primary, fallback = FakeDispenser("primary"), FakeDispenser("fallback")
    primary.mode = "crash"
    assert (await make(primary, fallback).allocate("default", 5)).source == "fallback"


async def test_hanging_layer_is_cut_off_by_its_budget() -> None:
    """A layer that hangs is abandoned after its own timeout, leaving time for the next."""
    primary, fallback = FakeDispenser("primary"), FakeDispenser("fallback")
    primary.mode = "hang"
    allocator = make(primary, fallback, timeout=2.0, layer_timeout=0.2)
    started = time.perf_counter()
    allocation = await allocator.allocate("default", 5)
    assert allocation.source == "fallback"
    assert time.perf_counter() - started < 1.0


async def test_open_breaker_skips_the_layer_without_calling_it() -> None:
    """Once a layer's breaker is open, requests skip it without trying it."""
    primary, fallback = FakeDispenser("primary"), FakeDispenser("fallback")
    primary.mode = "fail"
    allocator = make(primary, fallback, threshold=1)
    await allocator.allocate("default", 1)
    assert allocator.layers[0].breaker.state is BreakerState.OPEN
    await allocator.allocate("default", 1)
    assert primary.calls == 1


async def test_no_layer_gives_service_unavailable_with_retry_after() -> None:
    """When every layer fails the request fails with 503 and a Retry-After of >= 1 s."""
    only = FakeDispenser("only")
    only.mode = "fail"
    allocator = make(only, reset=4.5)
    with pytest.raises(ServiceUnavailable) as caught:
        await allocator.allocate("default", 1)
    assert caught.value.status_code == 503
    assert caught.value.headers()["Retry-After"] == "5"
    assert read_instance(None, allocator.metrics).failed == 1


async def test_overall_budget_bounds_the_request() -> None:
    """Hanging layers cannot hold a request past ALLOCATION_TIMEOUT."""
    first, second = FakeDispenser("a"), FakeDispenser("b")
    first.mode = second.mode = "hang"
    allocator = make(first, second, timeout=0.3, layer_timeout=10.0)
    started = time.perf_counter()
    with pytest.raises(ServiceUnavailable):
        await allocator.allocate("default", 1)
    assert time.perf_counter() - started < 1.0


async def test_request_errors_are_not_layer_failures() -> None:
    """An exhausted namespace is the request's fault: raised at once, breaker untouched."""

    class Exhausted(FakeDispenser):
        async def allocate(self, namespace: str, size: int):  # type: ignore[no-untyped-def]
            raise NamespaceExhausted(namespace, size, 3)

    primary, fallback = Exhausted("primary"), FakeDispenser("fallback")
    allocator = make(primary, fallback)
    with pytest.raises(NamespaceExhausted):
        await allocator.allocate("default", 5)
    assert fallback.calls == 0
    assert allocator.layers[0].breaker.state is BreakerState.CLOSED


async def test_metrics_count_by_source() -> None:
    """Successes are counted per source with the IDs they carried; a source of no known
    layer counts as "other"."""
    primary, fallback = FakeDispenser(SOURCE_REDIS), FakeDispenser(SOURCE_POSTGRESQL)
    stranger = FakeDispenser("a-test-layer")
    allocator = make(primary, fallback, stranger, threshold=5)
    await allocator.allocate("default", 3)
    primary.mode = "fail"
    await allocator.allocate("default", 4)
    fallback.mode = "fail"
    await allocator.allocate("default", 5)
    counted = read_instance(None, allocator.metrics)
    assert counted.by_source == {SOURCE_REDIS: 1, SOURCE_POSTGRESQL: 1, "other": 1}
    assert counted.ids_allocated == 12 and counted.failed == 0


async def test_segments_on_hand_serve_without_a_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a segment on hand, a request is served with no timeout armed (nothing it does
    can wait), never suspends, counts as the layer's success, and names its source."""
    armed: list[float | None] = []
    real_timeout = asyncio.timeout

    def counted(delay: float | None) -> asyncio.Timeout:
        armed.append(delay)
        return real_timeout(delay)

    monkeypatch.setattr(asyncio, "timeout", counted)
    inner = FakeDispenser(SOURCE_REDIS)
    segments = SegmentDispenser(inner, min_length=1000, max_length=1000, target_seconds=0)
    layer = Layer(segments, CircuitBreaker(failure_threshold=1, reset_timeout=60), 1.0)
    metrics = Counters()
    allocator = Allocator([layer], timeout=1.0, metrics=metrics)
    await allocator.allocate("default", 10)  # the first fetches its segment, timed
    assert len(armed) == 1
    request = allocator.allocate("default", 10)
    with pytest.raises(StopIteration) as done:
        request.send(None)  # runs to its end at once: it never suspended
    allocation = done.value.value
    assert (allocation.range.start, allocation.source) == (11, SOURCE_REDIS)
    assert len(armed) == 1 and inner.calls == 1
    assert read_instance(None, metrics).by_source == {SOURCE_REDIS: 2}
    await segments.aclose()


async def test_segments_on_hand_are_not_served_while_their_layer_is_open() -> None:
    """An open breaker skips the layer, even the segments it has on hand."""
    inner = FakeDispenser(SOURCE_REDIS)
    segments = SegmentDispenser(inner, min_length=1000, max_length=1000, target_seconds=0)
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=60)
    fallback = FakeDispenser(SOURCE_POSTGRESQL, start=10**9)
    allocator = Allocator(
        [Layer(segments, breaker, 1.0), Layer(fallback, CircuitBreaker(), 1.0)],
        timeout=1.0,
        metrics=Counters(),
    )
    await allocator.allocate("default", 10)
    breaker.record_failure()
    assert (await allocator.allocate("default", 10)).source == SOURCE_POSTGRESQL
    await segments.aclose()
