"""Fakes for pure unit tests of logic; integration tests use the real backends."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from keygen.constants import GRANT_RESERVE, MAX_ID
from keygen.dispensers.segments import SegmentSource
from keygen.errors import LayerUnavailable, LedgerUnavailable, NamespaceExhausted
from keygen.histogram import REFILL_BUCKETS, Histogram
from keygen.ledgers.base import (
    ApiKeyRecord,
    Grant,
    KeyUsage,
    Ledger,
    NamespaceStatus,
    ReserveUsage,
)
from keygen.ranges import IdRange


class FakeLedger:
    """An in-memory ledger that can be told to fail or to stall."""

    name = "fake"

    def __init__(self, delay: float = 0.0) -> None:
        self.last: dict[str, int] = {}
        self.granted: list[tuple[IdRange, str]] = []  # (span, kind), in grant order
        self.trail: list[Grant] = []  # the audit trail
        self.usages: list[ReserveUsage] = []
        self.keys: list[ApiKeyRecord] = []
        self.usage: dict[tuple[str, str], tuple[int, int]] = {}  # (day, key id): (requests, ids)
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
        self.granted.append((granted, kind))
        self.trail.append(
            Grant(len(self.trail) + 1, namespace, last + 1, last + count, kind, holder)
        )
        return granted

    async def advance_to(self, namespace: str, last_id: int) -> int:
        self.last[namespace] = max(self.last.get(namespace, 0), last_id)
        return self.last[namespace]

    async def record_reserve_usage(self, usage: ReserveUsage) -> bool:
        if self.down:
            raise LedgerUnavailable("fake ledger is down")
        if all((u.namespace, u.start) != (usage.namespace, usage.start) for u in self.usages):
            self.usages.append(usage)
        await self.advance_to(usage.namespace, usage.end)
        reserve = (usage.namespace, usage.start, usage.end, GRANT_RESERVE)
        return any((g.namespace, g.start, g.end, g.kind) == reserve for g in self.trail)

    async def status(self) -> list[NamespaceStatus]:
        return [NamespaceStatus(ns, last, 0) for ns, last in sorted(self.last.items())]

    async def grants(
        self, *, after: int = 0, holder_prefix: str | None = None, limit: int = 10_000
    ) -> list[Grant]:
        if self.down:
            raise LedgerUnavailable("fake ledger is down")
        prefix = holder_prefix or ""
        return [g for g in self.trail if g.id > after and g.holder.startswith(prefix)][:limit]

    async def overlapping(self, namespace: str, start: int, end: int) -> list[Grant]:
        if self.down:
            raise LedgerUnavailable("fake ledger is down")
        return [
            g for g in self.trail if g.namespace == namespace and g.end >= start and g.start <= end
        ]

    async def add_api_key(self, key: ApiKeyRecord) -> None:
        if self.down:
            raise LedgerUnavailable("fake ledger is down")
        self.keys.append(key)

    async def api_keys(self) -> list[ApiKeyRecord]:
        if self.down:
            raise LedgerUnavailable("fake ledger is down")
        return list(self.keys)

    async def revoke_api_key(self, key_id: str) -> bool:
        for index, key in enumerate(self.keys):
            if key.id == key_id and key.revoked_at is None:
                self.keys[index] = dataclasses.replace(key, revoked_at=time.time())
                return True
        return False

    async def add_key_usage(self, day: str, usage: dict[str, tuple[int, int]]) -> None:
        if self.down:
            raise LedgerUnavailable("fake ledger is down")
        for key_id, (requests, ids) in usage.items():
            before = self.usage.get((day, key_id), (0, 0))
            self.usage[day, key_id] = (before[0] + requests, before[1] + ids)

    async def key_usage(self, since_day: str) -> list[KeyUsage]:
        return [
            KeyUsage(key_id, day, requests, ids)
            for (day, key_id), (requests, ids) in sorted(self.usage.items())
            if day >= since_day
        ]

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

    async def segment(self, namespace: str, length: int) -> IdRange:
        return await self.allocate(namespace, length)

    async def ping(self) -> None:
        if self.mode != "serve":
            raise LayerUnavailable(f"{self.source} is down")

    async def aclose(self) -> None:
        pass


# The fakes stand for these protocols: mypy checks here that they still match them.
_LEDGER: type[Ledger] = FakeLedger
_DISPENSER: type[SegmentSource] = FakeDispenser
