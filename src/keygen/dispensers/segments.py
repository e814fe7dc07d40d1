"""Segments: ranges a layer handed this process, served from memory, the next one fetched
ahead (Meituan Leaf's double buffer).

Every request (or coalesced batch) would otherwise wait for its layer: a Redis round trip,
or a ledger transaction. Instead this dispenser asks the layer below it for a **segment**
(``SegmentSource.segment``: one fenced Redis function call carving it from the shared lease,
or one grant of the ledger) of about ``target_seconds`` of this process's demand, serves
requests from it by moving a cursor in memory, and once ``prefetch_at`` of it is used (a
tenth) fetches the next one in the background, so that in steady state no request waits for
Redis, PostgreSQL or SQLite. A segment is this process's alone as soon as the call that
produced it succeeded, like any range the service acknowledged (docs/correctness.md); a
segment a crash abandons is wasted, never reused. The rules kept
(docs/correctness.md):

- a segment is served only once the call that produced it succeeded;
- the next segment never shares an ID with the current one (each is its own carve or
  grant); when the current one is too short for a request and the next is on hand, the
  current one's tail is wasted, unless the next one follows it (one span: kept);
- a fetch that fails is simply tried again (a failed prefetch at most once per
  ``RETRY_PAUSE``; a request with nothing on hand tries at once, and its error is the
  layer's, so the allocator falls back);
- near the end of a namespace a fetch asks for what is left (``segment.what_is_left``);
- the length adapts to demand, within ``min_length`` and ``max_length``: at most two
  segments per namespace are held (the current and the next), so a ``kill -9`` wastes at most
  ``2 * max_length`` IDs per namespace and process.

``source`` is the layer's: a segment from Redis is served as ``redis_sentinel``, one from
the embedded ledger as ``sqlite``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import Final, Protocol

from keygen.dispensers.base import Dispenser
from keygen.dispensers.segment import Segment, what_is_left
from keygen.histogram import Histogram
from keygen.ranges import IdRange

log = logging.getLogger(__name__)

#: A failed prefetch is not tried again sooner (requests with nothing on hand still try).
RETRY_PAUSE: Final = 0.25
#: A segment serves at least this many requests of the size that made it be fetched.
MIN_REQUESTS: Final = 4
#: A segment is at most this many times as long as the one fetched before it.
GROWTH: Final = 4


class SegmentSource(Dispenser, Protocol):
    """A layer segments come from; its ``allocate`` serves requests too large for one."""

    async def segment(self, namespace: str, length: int) -> IdRange:
        """``length`` consecutive IDs of ``namespace``, this process's alone, to serve from.

        Raises:
            as ``Dispenser.allocate``.
        """
        ...


class _Namespace:
    """One namespace's segments: the one served and the one fetched ahead."""

    __slots__ = (
        "current",
        "demand",
        "fetch",
        "last_fetch",
        "length",
        "refill_at",
        "retry_at",
        "spare",
        "used",
    )

    def __init__(self, length: int) -> None:
        self.current = Segment.empty()
        self.refill_at = 0
        self.spare: Segment | None = None
        self.fetch: asyncio.Task[IdRange] | None = None
        self.length = length
        self.demand = 0  # IDs served since the last fetch started
        self.last_fetch = time.monotonic()
        self.retry_at = 0.0
        self.used = True

    def swap(self, prefetch_at: float) -> int:
        """Serve from the spare segment now; return the IDs of the current one given up."""
        current, spare = self.current, self.spare
        assert spare is not None
        self.spare = None
        self.refill_at = spare.start + int(spare.size * prefetch_at)
        if current.remaining and spare.follows(current):  # one span: the tail is kept
            current.end = spare.end
            return 0
        self.current = spare
        return current.remaining

    @property
    def on_hand(self) -> int:
        return self.current.remaining + (0 if self.spare is None else self.spare.size)


class SegmentDispenser:
    """Serves from in-process segments of ``inner``'s ranges (see the module docstring).

    Args:
        inner: the layer segments come from; requests larger than ``max_length`` go to it
            directly.
        target_seconds: how much of this process's demand a segment should hold.
        min_length, max_length: the bounds of a segment's length.
        prefetch_at: the part of a segment used when the next one is fetched.
        max_namespaces: namespaces held at most; past it, an idle one's segments are dropped
            (wasted).
    """

    def __init__(
        self,
        inner: SegmentSource,
        *,
        target_seconds: float = 1.0,
        min_length: int = 10_000,
        max_length: int = 100_000_000,
        prefetch_at: float = 0.1,
        max_namespaces: int = 10_000,
    ) -> None:
        if not 1 <= min_length <= max_length:
            raise ValueError("segment lengths must satisfy 1 <= min_length <= max_length")
        if not 0.0 <= prefetch_at < 1.0:
            raise ValueError("prefetch_at must be within [0, 1)")
        self.inner = inner
        self.source = inner.source
        #: The layer's own: a refill of its lease is what a segment may wait for.
        self.refill_seconds: Histogram = inner.refill_seconds
        self.target_seconds = target_seconds
        self.min_length, self.max_length = min_length, max_length
        self.prefetch_at = prefetch_at
        self.max_namespaces = max_namespaces
        self.segments_fetched = 0
        self.requests_served = 0
        self.evictions = 0  # namespaces whose segments were dropped to bound the memory held
        self._wasted = 0
        self._namespaces: dict[str, _Namespace] = {}

    # -- what the allocator and the metrics read ------------------------------------------

    @property
    def refills(self) -> int:
        return self.inner.refills

    @property
    def ids_wasted(self) -> int:
        return self.inner.ids_wasted + self._wasted

    # -- serving ------------------------------------------------------------------------------

    async def allocate(self, namespace: str, size: int) -> IdRange:
        if size > self.max_length:
            return await self.inner.allocate(namespace, size)
        state = self._namespaces.get(namespace)
        if state is None:
            state = self._hold(namespace)
        while True:
            served = self._serve(namespace, state, size)
            if served is not None:
                return served
            await self._fetched(namespace, state, size)

    def carve_now(self, namespace: str, size: int) -> IdRange | None:
        """``size`` IDs from the segments on hand, or None when a request would have to wait
        for its layer: the allocator's path without a timeout (nothing here can hang)."""
        state = self._namespaces.get(namespace)
        if state is None or size > self.max_length:
            return None
        return self._serve(namespace, state, size)

    def _serve(self, namespace: str, state: _Namespace, size: int) -> IdRange | None:
        """Carve from the current segment, swapping the next one in when it falls short
        (no await: nothing can interleave); None when nothing on hand fits."""
        while True:
            current = state.current
            start = current.carve(size)
            if start is not None:
                state.demand += size
                state.used = True
                if current.next > state.refill_at and state.spare is None and state.fetch is None:
                    self._prefetch(namespace, state, size)
                self.requests_served += 1
                return IdRange(namespace, start, start + size - 1)
            if state.spare is None:
                return None
            self._wasted += state.swap(self.prefetch_at)

    def _hold(self, namespace: str) -> _Namespace:
        if len(self._namespaces) >= self.max_namespaces:
            self._evict()
        state = self._namespaces[namespace] = _Namespace(self.min_length)
        return state

    def _evict(self) -> None:
        """Drop the segments of a namespace idle since the sweep last passed it (a second
        chance: a namespace served since is spared once); they are wasted."""
        held = self._namespaces
        for _ in range(2 * len(held)):  # two passes: the first clears every flag it spares
            namespace, state = next(iter(held.items()))
            del held[namespace]
            if not state.used and state.fetch is None:
                break
            state.used = False
            held[namespace] = state
        else:  # every namespace has a fetch in flight: the oldest goes (its fetch wasted)
            namespace, state = next(iter(held.items()))
            del held[namespace]
        self._wasted += state.on_hand
        self.evictions += 1

    def _length(self, state: _Namespace, size: int) -> int:
        """About ``target_seconds`` of the demand since the last fetch, within the bounds,
        and at most ``GROWTH`` times the last length: a burst right after a fetch (a few
        requests in a millisecond) does not pass for a steady rate."""
        now = time.monotonic()
        elapsed = max(now - state.last_fetch, 1e-3)
        rate = state.demand / elapsed
        state.demand, state.last_fetch = 0, now
        wanted = min(int(rate * self.target_seconds), GROWTH * state.length)
        return min(self.max_length, max(self.min_length, wanted, MIN_REQUESTS * size))

    def _start_fetch(self, namespace: str, state: _Namespace, size: int) -> asyncio.Task[IdRange]:
        length = state.length = self._length(state, size)
        fetching = what_is_left(
            partial(self.inner.segment, namespace),
            namespace,
            length,
            size=size,
            elsewhere=state.current.remaining,
        )
        task = asyncio.get_running_loop().create_task(fetching)
        state.fetch = task
        task.add_done_callback(lambda done: self._landed(namespace, state, done))
        return task

    def _landed(self, namespace: str, state: _Namespace, task: asyncio.Task[IdRange]) -> None:
        """Take a finished fetch in (once: from its done callback, or sooner, from a request
        that found it done before the callback ran)."""
        if state.fetch is not task:
            return
        state.fetch = None
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            state.retry_at = time.monotonic() + RETRY_PAUSE
            log.debug("segment of %r: the fetch failed (%s)", namespace, error)
            return
        self.segments_fetched += 1
        segment = task.result()
        if state.spare is not None:  # cannot happen with one fetch at a time; never lose IDs
            self._wasted += state.spare.size
        if self._namespaces.get(namespace) is not state:  # evicted meanwhile
            self._wasted += segment.size
            return
        state.spare = Segment(segment.start, segment.end)

    def _prefetch(self, namespace: str, state: _Namespace, size: int) -> None:
        if time.monotonic() >= state.retry_at:
            self._start_fetch(namespace, state, size)

    async def _fetched(self, namespace: str, state: _Namespace, size: int) -> None:
        """Wait for a segment (the one in flight, or a fetch of its own), raising its error."""
        task = state.fetch or self._start_fetch(namespace, state, size)
        if not task.done():
            await asyncio.shield(task)  # a request that gives up leaves the fetch to land
        # Taken in now: awaiting a done task does not yield, so a caller looping until the
        # done callback ran would spin and starve the loop that is to run it.
        self._landed(namespace, state, task)
        task.result()  # the fetch's error, if it failed before this request came

    def remaining(self, namespace: str) -> int:
        """IDs on hand for ``namespace``: the current segment's rest and the next one."""
        state = self._namespaces.get(namespace)
        if state is None:
            return 0
        return state.on_hand

    async def ping(self) -> None:
        await self.inner.ping()

    async def aclose(self) -> None:
        """The segments on hand are wasted; a fetch in flight is cancelled."""
        fetches = [s.fetch for s in self._namespaces.values() if s.fetch is not None]
        for fetch in fetches:
            fetch.cancel()
        await asyncio.gather(*fetches, return_exceptions=True)
        for namespace in list(self._namespaces):
            self._wasted += self.remaining(namespace)
        self._namespaces.clear()
        await self.inner.aclose()
