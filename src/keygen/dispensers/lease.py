"""In-process leases: carve ranges out of a span the ledger granted to this process alone.

This is the embedded default's dispenser (and PostgreSQL's, when leases are chosen). A lease
lives only in this process's memory, so a crash loses its unused tail: those IDs are wasted,
never reissued, because the ledger already counted them as granted.

A namespace's lease grows with the requests it serves, so that grants stay rare whatever the
request size: when a lease would serve fewer than ``GROW_BELOW`` requests of the size that
needed a refill, the refill grants ``REQUESTS_PER_LEASE`` times that size instead, up to
``max_lease_size`` (``LEASE_GROWTH`` times ``lease_size`` by default); it never shrinks while
the namespace is held. Only a request larger than ``max_lease_size`` is granted straight
from the ledger.
A crash therefore wastes at most ``max_lease_size`` IDs per namespace held in memory.

At most ``max_namespaces`` leases are held: past it, the lease of a namespace idle since the
last eviction (a second-chance sweep; a carve only sets a flag) is given up, its tail counted
as wasted, never reused.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Final

from keygen.config import DEFAULT_MAX_NAMESPACES
from keygen.constants import GRANT_DIRECT, GRANT_LEASE, MAX_ID
from keygen.dispensers.singleflight import SingleFlight
from keygen.errors import NamespaceExhausted
from keygen.histogram import REFILL_BUCKETS, Histogram
from keygen.ledgers.base import Ledger
from keygen.ranges import IdRange

#: A lease that would serve fewer than this many requests of the size that needed a refill
#: grows, to serve this many more of them...
GROW_BELOW: Final = 4
REQUESTS_PER_LEASE: Final = 64
#: ...and a lease grows to at most this many times ``lease_size`` (unless told otherwise).
LEASE_GROWTH: Final = 1024


class _Lease:
    __slots__ = ("end", "length", "next", "used")

    def __init__(self, start: int, end: int, length: int) -> None:
        self.next = start
        self.end = end
        self.length = length  # IDs the next refill asks for
        self.used = True  # served since the last eviction sweep passed it

    @property
    def remaining(self) -> int:
        return self.end - self.next + 1


class LeaseDispenser:
    """Serves ranges from per-namespace leases, refilled from the ledger one grant at a time.

    Carving is synchronous (no ``await`` between reading and advancing the cursor), so
    concurrent requests on the event loop cannot interleave inside it. At most one refill per
    namespace is in flight, so many requests finding a lease exhausted cause one grant.
    Leases grow toward the requests' size (see the module docstring); only requests larger
    than ``max_lease_size`` are granted straight from the ledger.

    Args:
        lease_size: IDs of a namespace's first lease.
        max_lease_size: the most IDs a lease grows to (``LEASE_GROWTH * lease_size`` when
            None): the IDs a crash can waste per namespace.
        max_namespaces: the most leases held; past it an idle namespace's lease is evicted.
    """

    def __init__(
        self,
        ledger: Ledger,
        *,
        lease_size: int,
        holder: str,
        max_lease_size: int | None = None,
        max_namespaces: int = DEFAULT_MAX_NAMESPACES,
    ) -> None:
        if lease_size < 1:
            raise ValueError("lease_size must be at least 1")
        if max_namespaces < 1:
            raise ValueError("max_namespaces must be at least 1")
        if max_lease_size is None:
            max_lease_size = min(MAX_ID, lease_size * LEASE_GROWTH)
        self.source = ledger.name
        self.lease_size = lease_size
        self.max_lease_size = max(lease_size, max_lease_size)
        self.max_namespaces = max_namespaces
        self.ids_wasted = 0  # tails of leases given up (a request did not fit, or evicted)
        self.evictions = 0  # leases of idle namespaces given up to bound the memory held
        self.refills = 0
        self.refill_seconds = Histogram(REFILL_BUCKETS)
        self._ledger = ledger
        self._holder = holder
        self._leases: dict[str, _Lease] = {}
        self._refills = SingleFlight()

    async def allocate(self, namespace: str, size: int) -> IdRange:
        if size > self.max_lease_size:
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
        lease.used = True
        return IdRange(namespace, start, start + size - 1)

    async def _refill(self, namespace: str, size: int) -> None:
        started = time.perf_counter()
        lease = self._leases.get(namespace)
        length = self.lease_size if lease is None else lease.length
        if length < GROW_BELOW * size:  # a lease would serve a request or two: grow it
            length = max(length, min(self.max_lease_size, REQUESTS_PER_LEASE * size))
        try:
            grant = await self._ledger.grant(
                namespace, length, kind=GRANT_LEASE, holder=self._holder
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
            lease.length = length
            return
        if lease is not None:
            self.ids_wasted += lease.remaining
        elif len(self._leases) >= self.max_namespaces:
            self._evict()
        self._leases[namespace] = _Lease(grant.start, grant.end, length)

    def _evict(self) -> None:
        """Give up the lease of a namespace idle since the sweep last passed it (second
        chance: a used lease is spared once and moved to the back); its tail is wasted."""
        leases = self._leases
        while True:  # ends within two passes: the first clears every flag it spares
            namespace, lease = next(iter(leases.items()))
            del leases[namespace]
            if not lease.used:
                break
            lease.used = False
            leases[namespace] = lease
        self.ids_wasted += lease.remaining
        self.evictions += 1

    def remaining(self, namespace: str) -> int:
        """IDs left in this process's lease of ``namespace``."""
        lease = self._leases.get(namespace)
        return 0 if lease is None else lease.remaining

    async def ping(self) -> None:
        await self._ledger.ping()

    async def aclose(self) -> None:
        """Nothing to release: the ledger is closed by its owner."""
