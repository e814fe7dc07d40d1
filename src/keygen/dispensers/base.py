"""The seam every dispenser implements: the layers the allocator tries in order."""

from __future__ import annotations

from typing import Protocol

from keygen.histogram import Histogram
from keygen.ranges import IdRange


class Dispenser(Protocol):
    """Hands out ranges; each range it returns is its caller's alone, forever."""

    #: The `source` reported for the ranges it serves.
    source: str
    #: How long each lease (or reserve) taken from the ledger took to take.
    refill_seconds: Histogram

    @property
    def refills(self) -> int:
        """Leases (or reserves) taken from the ledger so far."""
        ...

    @property
    def ids_wasted(self) -> int:
        """IDs given up unused (lease tails, shares of abandoned grants): never handed out."""
        ...

    async def allocate(self, namespace: str, size: int) -> IdRange:
        """Return ``size`` consecutive IDs of ``namespace``.

        Raises:
            LayerUnavailable: this layer cannot serve now; the next one should be tried.
            RequestError: the request cannot be served by any layer (e.g. the namespace
                is exhausted).
        """
        ...

    async def ping(self) -> None:
        """Raise LayerUnavailable unless the layer could serve now."""
        ...

    async def aclose(self) -> None: ...
