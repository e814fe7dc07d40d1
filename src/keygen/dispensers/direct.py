"""Straight from the ledger: every range is part of a grant committed just for it.

One ledger transaction per request would cap the layer at the ledger's transaction rate,
and every transaction on a namespace waits for the previous one's row lock anyway. So
requests for a namespace are *coalesced*: while one grant is in flight, the requests that
arrive queue up; when it completes, all of them are served by **one** grant of their total
size, split in arrival order into consecutive, disjoint ranges of exactly the sizes asked.
With nothing in flight a request is granted at once, alone, so coalescing adds no latency
when idle and grows the batches as load grows.

Why this cannot repeat an ID: the ledger grants each span once; the split hands every
position of the span to at most one request, computed from the batch as it was sent. A
request that gives up (its time budget ran out) while its batch is in flight keeps its
position: its share is wasted, never given to another request. A request that gives up
before its batch is sent is simply left out of it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from keygen.constants import GRANT_DIRECT
from keygen.errors import KeygenError, LayerUnavailable, LedgerUnavailable, NamespaceExhausted
from keygen.ledgers.base import Ledger
from keygen.ranges import IdRange

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Request:
    size: int
    future: asyncio.Future[IdRange]


@dataclass(slots=True)
class _Queue:
    """A namespace's requests waiting for the next grant, and the task that grants them."""

    waiting: list[_Request] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


class DirectDispenser:
    """Serves every request from a ledger grant, coalescing concurrent requests per namespace.

    At most one grant per namespace is in flight in this process; concurrent grants on one
    namespace would only queue on the ledger's row lock.
    """

    def __init__(self, ledger: Ledger, *, holder: str) -> None:
        self.source = ledger.name
        self.grants = 0  # ledger grants made
        self.requests_served = 0
        self.ids_wasted = 0  # shares of requests that gave up while their grant was in flight
        self._ledger = ledger
        self._holder = holder
        self._queues: dict[str, _Queue] = {}
        self._closed = False

    async def allocate(self, namespace: str, size: int) -> IdRange:
        if size < 1:
            raise ValueError("size must be at least 1")
        if self._closed:
            raise LayerUnavailable("the direct dispenser is closed")
        loop = asyncio.get_running_loop()
        request = _Request(size, loop.create_future())
        queue = self._queues.get(namespace)
        if queue is None:
            queue = self._queues[namespace] = _Queue()
        queue.waiting.append(request)
        if queue.task is None:
            queue.task = loop.create_task(self._drain(namespace, queue))
        # Cancelling this await cancels the future: the drain task then skips the request
        # (not yet sent) or discards its share (in flight).
        return await request.future

    async def _drain(self, namespace: str, queue: _Queue) -> None:
        """Grant batches for ``namespace`` until nobody is waiting."""
        batch: list[_Request] = []
        try:
            while True:
                batch = [r for r in queue.waiting if not r.future.done()]
                queue.waiting.clear()
                if not batch:
                    break
                await self._serve(namespace, batch)
        except BaseException as exc:
            # Only cancellation (aclose) or a bug gets here: nobody may wait forever.
            for request in (*queue.waiting, *batch):
                _fail(request, LayerUnavailable(f"the direct dispenser stopped: {exc!r}"))
            queue.waiting.clear()
            if not isinstance(exc, asyncio.CancelledError):
                log.exception("direct dispenser failed on namespace %r", namespace)
            raise
        finally:
            queue.task = None
            if not queue.waiting and self._queues.get(namespace) is queue:
                del self._queues[namespace]

    async def _serve(self, namespace: str, batch: list[_Request]) -> None:
        """Serve ``batch`` with one grant; near exhaustion, serve those that still fit."""
        while batch:
            total = sum(r.size for r in batch)
            try:
                granted = await self._ledger.grant(
                    namespace, total, kind=GRANT_DIRECT, holder=self._holder
                )
            except NamespaceExhausted as exhausted:
                # Keep, in arrival order, the requests that fit in what is left and refuse the
                # rest. The loop ends: every round grants, or drops at least one request.
                fitting = self._fit(namespace, batch, exhausted.remaining)
                if len(fitting) == len(batch):  # the ledger contradicts itself; give up
                    for request in batch:
                        _fail(request, NamespaceExhausted(
                            namespace, request.size, exhausted.remaining), cause=exhausted)
                    return
                batch = fitting
                continue
            except KeygenError as exc:
                for request in batch:
                    _fail(request, LedgerUnavailable(exc.message), cause=exc)
                return
            except Exception as exc:
                log.exception("grant of %d IDs in %r failed unexpectedly", total, namespace)
                for request in batch:
                    _fail(request, LayerUnavailable(f"grant failed: {exc!r}"), cause=exc)
                return
            if granted.size != total or granted.namespace != namespace:
                log.error("asked the ledger for %d IDs in %r, got %s", total, namespace, granted)
                for request in batch:
                    _fail(request, LayerUnavailable("the ledger granted another span than asked"))
                return
            self._split(granted, batch)
            return

    def _fit(self, namespace: str, batch: list[_Request], remaining: int) -> list[_Request]:
        fitting = []
        for request in batch:
            if request.future.done():
                continue
            if request.size <= remaining:
                fitting.append(request)
                remaining -= request.size
            else:
                _fail(request, NamespaceExhausted(namespace, request.size, remaining))
        return fitting

    def _split(self, granted: IdRange, batch: list[_Request]) -> None:
        """Hand each request its own slice of ``granted``, in batch order."""
        self.grants += 1
        start = granted.start
        for request in batch:
            end = start + request.size - 1
            if request.future.done():  # gave up while the grant was in flight
                self.ids_wasted += request.size
            else:
                request.future.set_result(IdRange(granted.namespace, start, end))
                self.requests_served += 1
            start = end + 1

    async def ping(self) -> None:
        await self._ledger.ping()

    async def aclose(self) -> None:
        """Fail whatever is still waiting; the ledger is closed by its owner."""
        self._closed = True
        tasks = [queue.task for queue in self._queues.values() if queue.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _fail(request: _Request, error: Exception, *, cause: BaseException | None = None) -> None:
    if not request.future.done():
        error.__cause__ = cause
        request.future.set_exception(error)
