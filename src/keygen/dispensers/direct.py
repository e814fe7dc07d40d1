"""Straight from the ledger: every range is part of a grant committed just for it.

One ledger transaction per request would cap the layer at the ledger's transaction rate,
and every transaction on a namespace waits for the previous one's row lock anyway. So
requests for a namespace are coalesced (``coalescing.py``): while one grant is in flight, the
requests that arrive queue up, and the next grant, of their total size, serves them all,
split in arrival order. Why that cannot repeat an ID is explained there.
"""

from __future__ import annotations

import logging

from keygen.constants import GRANT_DIRECT
from keygen.dispensers.coalescing import Coalescer, Waiter, fit, split
from keygen.errors import (
    KeygenError,
    LayerUnavailable,
    LedgerUnavailable,
    NamespaceExhausted,
    RequestError,
)
from keygen.histogram import REFILL_BUCKETS, Histogram
from keygen.ledgers.base import Ledger
from keygen.ranges import IdRange
from keygen.requester import REQUESTED_BY

log = logging.getLogger(__name__)


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
        self.refills = 0  # no leases: every batch is a grant of its own
        self.refill_seconds = Histogram(REFILL_BUCKETS)
        self._ledger = ledger
        self._holder = holder
        self._batches = Coalescer(self._serve, name="direct")

    async def allocate(self, namespace: str, size: int) -> IdRange:
        if size < 1:
            raise ValueError("size must be at least 1")
        return await self._batches.submit(namespace, size)

    async def _serve(self, namespace: str, batch: list[Waiter]) -> None:
        """Serve ``batch`` with one grant; near exhaustion, serve those that still fit."""
        while batch:
            total = sum(r.size for r in batch)
            # The grant's audit row names every key of the batch (this task's own context).
            REQUESTED_BY.set(
                ", ".join(dict.fromkeys(r.requested_by for r in batch if r.requested_by))
            )
            try:
                granted = await self._ledger.grant(
                    namespace, total, kind=GRANT_DIRECT, holder=self._holder
                )
            except NamespaceExhausted as exhausted:
                # Keep, in arrival order, the requests that fit in what is left and refuse the
                # rest. The loop ends: every round grants, or drops at least one request.
                fitting = fit(namespace, batch, exhausted.remaining)
                if len(fitting) == len(batch):  # the ledger contradicts itself; give up
                    for request in batch:
                        request.fail(
                            NamespaceExhausted(namespace, request.size, exhausted.remaining),
                            cause=exhausted,
                        )
                    return
                batch = fitting
                continue
            except RequestError as exc:  # e.g. too many namespaces: no layer could serve it
                for request in batch:
                    request.fail(exc, cause=exc.__cause__)
                return
            except KeygenError as exc:
                for request in batch:
                    request.fail(LedgerUnavailable(exc.message), cause=exc)
                return
            if granted.size != total or granted.namespace != namespace:
                log.error("asked the ledger for %d IDs in %r, got %s", total, namespace, granted)
                for request in batch:
                    request.fail(LayerUnavailable("the ledger granted another span than asked"))
                return
            self._split(granted, batch)
            return

    def _split(self, granted: IdRange, batch: list[Waiter]) -> None:
        self.grants += 1
        served, wasted = split(granted, batch)
        self.requests_served += served
        self.ids_wasted += wasted

    async def ping(self) -> None:
        await self._ledger.ping()

    async def aclose(self) -> None:
        """Fail whatever is still waiting; the ledger is closed by its owner."""
        await self._batches.aclose()
