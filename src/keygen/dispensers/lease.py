"""The ledger as a source of segments: the embedded default's layer, and PostgreSQL's in
``lease`` mode.

``SegmentDispenser`` (``segments.py``) serves requests from in-process segments and fetches
the next one ahead; with this source, each segment is one grant of kind ``lease`` from the
ledger, to this process alone. A segment lives only in this process's memory, so a crash
loses its unused tail: those IDs are wasted, never reissued, because the ledger already
counted them as granted. A request larger than the largest segment is granted straight from
the ledger (kind ``direct``).
"""

from __future__ import annotations

import time
from typing import Final

from keygen.constants import GRANT_DIRECT, GRANT_LEASE
from keygen.histogram import REFILL_BUCKETS, Histogram
from keygen.ledgers.base import Ledger
from keygen.ranges import IdRange

#: A segment grows to at most this many times ``KEYGEN_LEASE_SIZE`` (its least length).
LEASE_GROWTH: Final = 1024


class LedgerLeases:
    """Grants of the ledger, to ``holder``: segments (``segment``) and whole requests too
    large for one (``allocate``)."""

    def __init__(self, ledger: Ledger, *, holder: str) -> None:
        self.source = ledger.name
        self.refills = 0  # segments granted
        self.ids_wasted = 0  # this layer keeps nothing: what is wasted is the segments'
        self.refill_seconds = Histogram(REFILL_BUCKETS)
        self._ledger = ledger
        self._holder = holder

    async def allocate(self, namespace: str, size: int) -> IdRange:
        return await self._ledger.grant(namespace, size, kind=GRANT_DIRECT, holder=self._holder)

    async def segment(self, namespace: str, length: int) -> IdRange:
        started = time.perf_counter()
        grant = await self._ledger.grant(namespace, length, kind=GRANT_LEASE, holder=self._holder)
        self.refills += 1
        self.refill_seconds.observe(time.perf_counter() - started)
        return grant

    async def ping(self) -> None:
        await self._ledger.ping()

    async def aclose(self) -> None:
        """Nothing to release: the ledger is closed by its owner."""
