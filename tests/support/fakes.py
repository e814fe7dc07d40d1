"""Fakes for pure unit tests of logic; integration tests use the real backends."""

from __future__ import annotations

import asyncio

from keygen.constants import MAX_ID
from keygen.errors import LayerUnavailable, NamespaceExhausted
from keygen.histogram import REFILL_BUCKETS, Histogram
from keygen.ledgers.base import NamespaceStatus
from keygen.ranges import IdRange


class FakeLedger:
    """An in-memory ledger that can be told to fail or to stall."""

    name = "fake"

    def __init__(self, delay: float = 0.0) -> None:
        self.last: dict[str, int] = {}
        self.grants: list[tuple[IdRange, str]] = []
        self.down = False
        self.delay = delay

    async def grant(self, namespace: str, count: int, *, kind: str, holder: str) -> IdRange:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            raise LayerUnavailable("fake ledger is down")
        last = self.last.get(namespace, 0)
        if count > MAX_ID - last:
            raise NamespaceExhausted(namespace, count, MAX_ID - last)
        self.last[namespace] = last + count
        granted = IdRange(namespace, last + 1, last + count)
        self.grants.append((granted, kind))
        return granted

    async def advance_to(self, namespace: str, last_id: int) -> int:
        self.last[namespace] = max(self.last.get(namespace, 0), last_id)
        return self.last[namespace]

    async def status(self) -> list[NamespaceStatus]:
        return [NamespaceStatus(ns, last, 0) for ns, last in sorted(self.last.items())]

    async def ping(self) -> None:
        if self.down:
            raise LayerUnavailable("fake ledger is down")

    async def aclose(self) -> None:
        pass


class FakeDispenser:
    """A dispenser whose behaviour a test scripts: serve, fail, or hang."""

    def __init__(self, source: str, *, start: int = 1) -> None:
        self.source = source
        self.next = start
        self.mode = "serve"  # "serve" | "fail" | "hang" | "crash"
        self.calls = 0
        self.refills = self.ids_wasted = 0
        self.refill_seconds = Histogram(REFILL_BUCKETS)

    async def allocate(self, namespace: str, size: int) -> IdRange:
        self.calls += 1
        if self.mode == "fail":
            raise LayerUnavailable(f"{self.source} is down")
        if self.mode == "hang":
            await asyncio.sleep(3600)
        if self.mode == "crash":
            raise RuntimeError("a bug")
        start, self.next = self.next, self.next + size
        return IdRange(namespace, start, start + size - 1)

    async def ping(self) -> None:
        if self.mode != "serve":
            raise LayerUnavailable(f"{self.source} is down")

    async def aclose(self) -> None:
        pass
