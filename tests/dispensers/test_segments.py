"""Segments (``keygen/dispensers/segments.py``) over a scripted layer: served from memory,
the next one fetched ahead, never an ID twice, a tail given up counted, failures and
cancellations leaving nothing lost. Over real Redis: tests/e2e (every Redis-mode test)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from keygen.checker import Record, check
from keygen.dispensers import segments as segments_module
from keygen.dispensers.segments import SegmentDispenser
from keygen.errors import LayerUnavailable
from keygen.ranges import IdRange
from tests.support.fakes import FakeDispenser


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def records(ranges: list[IdRange]) -> list[Record]:
    return [Record.of(r) for r in ranges]


def test_requests_are_served_from_memory_and_the_next_segment_is_fetched_ahead() -> None:
    """1,000 requests of 10 from segments of 1,000: about ten calls below, each fetched while
    the one before is still serving, so no request after the first waits for one."""

    async def scenario() -> None:
        inner = FakeDispenser("redis_sentinel")
        segments = SegmentDispenser(inner, min_length=1000, max_length=1000, target_seconds=0)
        got = [await segments.allocate("default", 10) for _ in range(1000)]
        assert got[0] == IdRange("default", 1, 10)
        assert check(records(got)).ok
        assert inner.calls <= 12  # 10,000 IDs in segments of 1,000, one fetched ahead
        assert segments.source == "redis_sentinel"
        assert segments.ids_wasted == 0  # requests of 10 fill segments of 1,000 exactly
        await settle()  # (these requests never yielded: the prefetch lands now)
        assert segments.remaining("default") >= 1000  # the next one is on hand

    run(scenario)


def test_no_request_waits_once_the_next_segment_is_on_hand() -> None:
    """With a layer that takes 50 ms a call and a request every millisecond (a segment of
    100 lasts about 100 ms), only the first request waits."""

    class Slow(FakeDispenser):
        async def allocate(self, namespace: str, size: int) -> IdRange:
            await asyncio.sleep(0.05)
            return await super().allocate(namespace, size)

    async def scenario() -> None:
        inner = Slow("redis_sentinel")
        segments = SegmentDispenser(inner, min_length=100, max_length=100, target_seconds=0)
        await segments.allocate("default", 1)
        waited = []
        for _ in range(99 + 150):  # the rest of the first segment and more than one after
            started = asyncio.get_running_loop().time()
            await segments.allocate("default", 1)
            waited.append(asyncio.get_running_loop().time() - started)
            await asyncio.sleep(0.001)
        assert max(waited) < 0.04, max(waited)
        assert inner.calls >= 3

    run(scenario)


def test_a_tail_too_short_for_a_request_is_given_up_and_counted() -> None:
    async def scenario() -> None:
        inner = FakeDispenser("redis_sentinel")
        segments = SegmentDispenser(inner, min_length=100, max_length=100, target_seconds=0)
        first = await segments.allocate("default", 70)
        inner.next += 50  # another instance carves 101..150 meanwhile
        await settle()  # the next segment, fetched once a tenth was used
        second = await segments.allocate("default", 40)  # 30 left: wasted
        assert first == IdRange("default", 1, 70)
        assert second.start == 151
        assert segments.ids_wasted == 30
        assert check(records([first, second])).ok

    run(scenario)


def test_a_tail_followed_by_the_next_segment_is_kept() -> None:
    """The next segment starts where the current one ends: one span, no ID wasted."""

    async def scenario() -> None:
        inner = FakeDispenser("redis_sentinel")
        segments = SegmentDispenser(inner, min_length=100, max_length=100, target_seconds=0)
        first = await segments.allocate("default", 70)
        await settle()
        second = await segments.allocate("default", 40)
        assert (first.end, second.start, second.end) == (70, 71, 110)
        assert segments.ids_wasted == 0
        await segments.aclose()

    run(scenario)


def test_segments_on_hand_serve_while_the_layer_fails_then_its_error_is_raised() -> None:
    """The layer goes down: what was carved keeps serving; then the layer's own error, so the
    allocator falls back; once it is back, segments come again, none sharing an ID."""

    async def scenario() -> None:
        inner = FakeDispenser("redis_sentinel")
        segments = SegmentDispenser(inner, min_length=100, max_length=100, target_seconds=0)
        got = [await segments.allocate("default", 10) for _ in range(2)]  # a tenth used
        await settle()  # the next segment lands
        inner.mode = "fail"
        got += [await segments.allocate("default", 10) for _ in range(18)]  # both segments
        with pytest.raises(LayerUnavailable):
            await segments.allocate("default", 10)
        inner.mode = "serve"
        got += [await segments.allocate("default", 10) for _ in range(30)]
        assert check(records(got)).ok
        assert len(got) == 50

    run(scenario)


def test_a_failed_prefetch_is_not_retried_on_every_request(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        monkeypatch.setattr(segments_module, "RETRY_PAUSE", 60.0)
        inner = FakeDispenser("redis_sentinel")
        segments = SegmentDispenser(inner, min_length=1000, max_length=1000, target_seconds=0)
        await segments.allocate("default", 1)
        inner.mode = "fail"
        await settle()  # the prefetch, failed... it was started before the failure: wait it
        calls = inner.calls
        for _ in range(500):
            await segments.allocate("default", 1)
            await asyncio.sleep(0)
        assert inner.calls <= calls + 1

    run(scenario)


def test_a_request_that_gives_up_leaves_its_segment_to_the_next() -> None:
    """A request cancelled while its segment is fetched (its time budget ran out): the fetch
    lands anyway and the next request is served from it: nothing carved is lost."""

    class Gated(FakeDispenser):
        def __init__(self) -> None:
            super().__init__("redis_sentinel")
            self.gate = asyncio.Event()

        async def allocate(self, namespace: str, size: int) -> IdRange:
            await self.gate.wait()
            return await super().allocate(namespace, size)

    async def scenario() -> None:
        inner = Gated()
        segments = SegmentDispenser(inner, min_length=100, max_length=100, target_seconds=0)
        waiting = asyncio.ensure_future(segments.allocate("default", 5))
        await settle()
        waiting.cancel()
        inner.gate.set()
        await settle()
        assert inner.calls == 1
        assert await segments.allocate("default", 5) == IdRange("default", 1, 5)

    run(scenario)


def test_the_length_follows_the_demand_within_its_bounds() -> None:
    async def scenario() -> None:
        inner = FakeDispenser("redis_sentinel")
        segments = SegmentDispenser(inner, min_length=100, max_length=50_000, target_seconds=1.0)
        sizes: list[int] = []
        original = inner.allocate

        async def noted(namespace: str, size: int) -> IdRange:
            sizes.append(size)
            return await original(namespace, size)

        inner.allocate = noted  # type: ignore[method-assign]
        for _ in range(3000):  # as fast as the loop goes: far above 50,000 IDs a second
            await segments.allocate("default", 10)
            await asyncio.sleep(0)
        assert sizes[0] == 100
        assert max(sizes) == 50_000
        big = await segments.allocate("default", 60_000)  # past the bound: straight below
        assert big.size == 60_000 and sizes[-1] == 60_000

    run(scenario)


def test_namespaces_held_are_bounded() -> None:
    async def scenario() -> None:
        inner = FakeDispenser("redis_sentinel")
        segments = SegmentDispenser(
            inner, min_length=100, max_length=100, target_seconds=0, max_namespaces=10
        )
        got = [await segments.allocate(f"ns{i}", 1) for i in range(50)]
        await settle()
        assert len(segments._namespaces) <= 10
        assert segments.ids_wasted > 0  # the evicted segments' rests
        assert check(records(got)).ok

    run(scenario)


def test_a_request_finding_the_fetch_done_before_its_callback_ran_takes_it_in() -> None:
    """The prefetch finishes and, before its done callback runs, a request finds the segment
    on hand too short: it must take the fetched segment in itself. (Awaiting a done task does
    not yield: a request waiting for the callback would spin and starve the loop.)"""

    async def scenario() -> None:
        inner = FakeDispenser("redis_sentinel")
        segments = SegmentDispenser(inner, min_length=100, max_length=100, target_seconds=0)
        await segments.allocate("default", 50)
        inner.next += 50  # another instance carves 101..150: the next segment is 151..250
        await settle()  # the second segment on hand; 50 left of the first
        await segments.allocate("default", 60)  # the first's 50 wasted; prefetch started
        # Queued behind the prefetch: it runs after the fetch finished, before its callback.
        late = asyncio.ensure_future(segments.allocate("default", 50))
        got = await asyncio.wait_for(late, 5)
        # 40 were left of 151..250: the fetched 251..350 follows it, one span.
        assert got == IdRange("default", 211, 260)

    run(scenario)
