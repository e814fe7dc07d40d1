"""In-process leases: carve ranges out of a span the ledger granted to this process alone.

This is the embedded default's dispenser (and PostgreSQL's, when leases are chosen). A lease
lives only in this process's memory, so a crash loses its unused tail: those IDs are wasted,
never reissued, because the ledger already counted them as granted.
"""

from __future__ import annotations

import time
from functools import partial

from keygen.constants import GRANT_DIRECT, GRANT_LEASE
from keygen.dispensers.singleflight import SingleFlight
from keygen.errors import NamespaceExhausted
from keygen.histogram import REFILL_BUCKETS, Histogram
from keygen.ledgers.base import Ledger
from keygen.ranges import IdRange


class _Lease:
    __slots__ = ("end", "next")

    def __init__(self, start: int, end: int) -> None:
        self.next = start
        self.end = end

    @property
    def remaining(self) -> int:
        return self.end - self.next + 1


class LeaseDispenser:
    """Serves ranges from per-namespace leases, refilled from the ledger one grant at a time.

    Carving is synchronous (no ``await`` between reading and advancing the cursor), so
    concurrent requests on the event loop cannot interleave inside it. At most one refill per
    namespace is in flight, so many requests finding a lease exhausted cause one grant.
    Requests larger than a lease are granted straight from the ledger.
    """

    def __init__(self, ledger: Ledger, *, lease_size: int, holder: str) -> None:
        if lease_size < 1:
            raise ValueError("lease_size must be at least 1")
        self.source = ledger.name
        self.lease_size = lease_size
        self.ids_wasted = 0  # tails of leases given up because a request did not fit
        self.refills = 0
        self.refill_seconds = Histogram(REFILL_BUCKETS)
        self._ledger = ledger
        self._holder = holder
        self._leases: dict[str, _Lease] = {}
        self._refills = SingleFlight()

    async def allocate(self, namespace: str, size: int) -> IdRange:
        if size > self.lease_size:
            return await self._ledger.grant(namespace, size, kind=GRANT_DIRECT, holder=self._holder)
        while True:
            carved = self._carve(namespace, size)
            if carved is not None:
                return carved
            # Every request that found the lease short waits for the same refill, and they
            # all wake together when it lands.
            await self._refills.run(namespace, partial(self._refill, namespace, size))

    def _carve(self, namespace: str, size: int) -> IdRange | None:
        lease = self._leases.get(namespace)
        if lease is None or lease.remaining < size:
            return None
        start = lease.next
        lease.next = start + size
        return IdRange(namespace, start, start + size - 1)

    async def _refill(self, namespace: str, size: int) -> None:
        started = time.perf_counter()
        try:
            grant = await self._ledger.grant(
                namespace, self.lease_size, kind=GRANT_LEASE, holder=self._holder
            )
        except NamespaceExhausted as exhausted:
            # Near 2**63 - 1 a full lease no longer fits, but the request may.
            if exhausted.remaining < size:
                raise NamespaceExhausted(namespace, size, exhausted.remaining) from None
            grant = await self._ledger.grant(
                namespace, exhausted.remaining, kind=GRANT_LEASE, holder=self._holder
            )
        self.refills += 1
        self.refill_seconds.observe(time.perf_counter() - started)
        lease = self._leases.get(namespace)
        if lease is not None and lease.remaining > 0 and grant.start == lease.end + 1:
            lease.end = grant.end  # contiguous with the old lease: keep its tail
            return
        if lease is not None:
            self.ids_wasted += lease.remaining
        self._leases[namespace] = _Lease(grant.start, grant.end)

    def remaining(self, namespace: str) -> int:
        """IDs left in this process's lease of ``namespace``."""
        lease = self._leases.get(namespace)
        return 0 if lease is None else lease.remaining

    async def ping(self) -> None:
        await self._ledger.ping()

    async def aclose(self) -> None:
        """Nothing to release: the ledger is closed by its owner."""
