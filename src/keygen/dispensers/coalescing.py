"""Coalescing: the concurrent requests for a namespace served by one call of their total size.

One round trip per request would cap a layer at its backend's round-trip rate, and spend the
client library's per-call cost (50 µs of redis-py for one FCALL) on every request. So while
one call for a namespace is in flight, the requests that arrive queue up; when it completes,
all of them are served by **one** call for their total size, whose range is split in arrival
order into consecutive, disjoint ranges of exactly the sizes asked. With nothing in flight a
request is sent at once, alone, so coalescing adds no latency when idle and grows the batches
as load grows.

Why this cannot repeat an ID: the backend hands out the batch's span once; the split gives
every position of the span to at most one request, computed from the batch as it was sent. A
request that gives up (its time budget ran out) while its batch is in flight keeps its
position: its share is wasted, never given to another request. A request that gives up
before its batch is sent is simply left out of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from keygen.errors import KeygenError, LayerUnavailable, NamespaceExhausted
from keygen.ranges import IdRange
from keygen.requester import REQUESTED_BY

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Waiter:
    """One request in a batch: its size, and where its range (or error) goes."""

    size: int
    future: asyncio.Future[IdRange]
    #: The API key the request came with (``keygen/requester.py``).
    requested_by: str = ""

    @property
    def gave_up(self) -> bool:
        return self.future.done()

    def fail(self, error: KeygenError, *, cause: BaseException | None = None) -> None:
        if not self.future.done():
            error.__cause__ = cause
            self.future.set_exception(error)


#: Serves a batch: resolves each waiter's future (those it leaves unresolved are failed).
ServeBatch = Callable[[str, list[Waiter]], Awaitable[None]]


@dataclass(slots=True)
class _Queue:
    """A namespace's requests waiting for the next batch, and the task that serves them."""

    waiting: list[Waiter] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


class Coalescer:
    """At most one batch per namespace in flight; the requests arriving meanwhile form the next.

    ``serve(namespace, batch)`` is called with the requests still waiting, in arrival order.
    """

    def __init__(self, serve: ServeBatch, *, name: str) -> None:
        self._serve = serve
        self._name = name
        self._queues: dict[str, _Queue] = {}
        self._closed = False

    async def submit(self, namespace: str, size: int) -> IdRange:
        if self._closed:
            raise LayerUnavailable(f"the {self._name} dispenser is closed")
        loop = asyncio.get_running_loop()
        waiter = Waiter(size, loop.create_future(), REQUESTED_BY.get())
        queue = self._queues.get(namespace)
        if queue is None:
            queue = self._queues[namespace] = _Queue()
        queue.waiting.append(waiter)
        if queue.task is None:
            queue.task = loop.create_task(self._drain(namespace, queue))
        # Cancelling this await cancels the future: the drain task then leaves the request out
        # (not yet sent) or wastes its share (in flight).
        return await waiter.future

    async def _drain(self, namespace: str, queue: _Queue) -> None:
        """Serve batches for ``namespace`` until nobody is waiting."""
        batch: list[Waiter] = []
        try:
            while True:
                batch = [w for w in queue.waiting if not w.gave_up]
                queue.waiting.clear()
                if not batch:
                    break
                try:
                    await self._serve(namespace, batch)
                except KeygenError as exc:
                    for waiter in batch:
                        waiter.fail(exc, cause=exc.__cause__)
                except Exception as exc:
                    log.exception("%s: a batch for %r failed unexpectedly", self._name, namespace)
                    for waiter in batch:
                        waiter.fail(LayerUnavailable(f"batch failed: {exc!r}"), cause=exc)
                for waiter in batch:  # a bug, not a path: nobody may wait for ever
                    waiter.fail(LayerUnavailable(f"the {self._name} dispenser did not serve"))
        except BaseException as exc:
            # Only cancellation (aclose) gets here: fail everyone still waiting.
            for waiter in (*queue.waiting, *batch):
                waiter.fail(LayerUnavailable(f"the {self._name} dispenser stopped: {exc!r}"))
            queue.waiting.clear()
            raise
        finally:
            queue.task = None
            if not queue.waiting and self._queues.get(namespace) is queue:
                del self._queues[namespace]

    async def aclose(self) -> None:
        """Fail whatever is still waiting."""
        self._closed = True
        tasks = [queue.task for queue in self._queues.values() if queue.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def fit(namespace: str, batch: list[Waiter], remaining: int) -> list[Waiter]:
    """The waiters that fit, in arrival order, in the ``remaining`` IDs of a namespace near
    its end; the others are refused with ``NamespaceExhausted`` (those that gave up, dropped)."""
    fitting = []
    for waiter in batch:
        if waiter.gave_up:
            continue
        if waiter.size <= remaining:
            fitting.append(waiter)
            remaining -= waiter.size
        else:
            waiter.fail(NamespaceExhausted(namespace, waiter.size, remaining))
    return fitting


def split(span: IdRange, batch: list[Waiter]) -> tuple[int, int]:
    """Hand each waiter its own slice of ``span`` (the batch's total size), in batch order.

    Returns (requests served, IDs wasted by those that gave up meanwhile)."""
    served = wasted = 0
    start = span.start
    for waiter in batch:
        end = start + waiter.size - 1
        if waiter.gave_up:
            wasted += waiter.size
        else:
            waiter.future.set_result(IdRange(span.namespace, start, end))
            served += 1
        start = end + 1
    return served, wasted
