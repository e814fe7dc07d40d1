"""The emergency reserve: served only below the journaled mark, resumed after a restart,
reported to the ledger and refilled once it answers; its budget, health and settings."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from keygen.allocator import Allocator, Layer
from keygen.api import create_app
from keygen.audit import replayed_reserves
from keygen.breaker import CircuitBreaker
from keygen.checker import Record, check
from keygen.config import Settings
from keygen.constants import GRANT_RESERVE
from keygen.dispensers import lease as lease_module
from keygen.dispensers import reserve as reserve_module
from keygen.dispensers.journal import JOURNAL_NAME
from keygen.dispensers.journal_records import replay
from keygen.dispensers.journal_witness import Witness
from keygen.dispensers.reserve import ReserveDispenser
from keygen.errors import LedgerUnavailable, ReserveExhausted, ReserveUnavailable
from keygen.ledgers.base import ApiKeyRecord, Grant, KeyUsage, ReserveUsage
from keygen.ledgers.postgres import PostgresLedger
from keygen.ledgers.sqlite import LEDGER_FILENAME, SqliteLedger
from keygen.metrics import Counters
from keygen.ranges import IdRange
from tests.support.app import running
from tests.support.fakes import FakeDispenser

pytestmark = pytest.mark.anyio

LOCATION = "sqlite:test"


class SwitchedLedger:
    """The real SQLite ledger behind a switch that makes it unreachable."""

    name = "sqlite"

    def __init__(self, ledger: SqliteLedger) -> None:
        self.ledger = ledger
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise LedgerUnavailable("the ledger is switched off")

    async def grant(self, namespace: str, count: int, *, kind: str, holder: str) -> IdRange:
        self._check()
        return await self.ledger.grant(namespace, count, kind=kind, holder=holder)

    async def record_reserve_usage(self, usage: ReserveUsage) -> bool:
        self._check()
        return await self.ledger.record_reserve_usage(usage)

    async def advance_to(self, namespace: str, last_id: int) -> int:
        self._check()
        return await self.ledger.advance_to(namespace, last_id)

    async def status(self) -> Any:
        self._check()
        return await self.ledger.status()

    async def grants(
        self, *, after: int = 0, holder_prefix: str | None = None, limit: int = 10_000
    ) -> list[Grant]:
        self._check()
        return await self.ledger.grants(after=after, holder_prefix=holder_prefix, limit=limit)

    async def overlapping(self, namespace: str, start: int, end: int) -> list[Grant]:
        self._check()
        return await self.ledger.overlapping(namespace, start, end)

    async def add_api_key(self, key: ApiKeyRecord) -> None:
        self._check()
        await self.ledger.add_api_key(key)

    async def api_keys(self) -> list[ApiKeyRecord]:
        self._check()
        return await self.ledger.api_keys()

    async def revoke_api_key(self, key_id: str) -> bool:
        self._check()
        return await self.ledger.revoke_api_key(key_id)

    async def add_key_usage(self, day: str, usage: dict[str, tuple[int, int]]) -> None:
        self._check()
        await self.ledger.add_key_usage(day, usage)

    async def key_usage(self, since_day: str) -> list[KeyUsage]:
        self._check()
        return await self.ledger.key_usage(since_day)

    async def ping(self) -> None:
        self._check()

    async def aclose(self) -> None:
        await self.ledger.aclose()


@pytest.fixture(autouse=True)
def fast_keeper(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keeper rounds and the quiet period in tenths of a second, not seconds."""
    monkeypatch.setattr(reserve_module, "KEEP_INTERVAL", 0.05)
    monkeypatch.setattr(reserve_module, "MAX_BACKOFF", 0.1)
    monkeypatch.setattr(reserve_module, "QUIET", 0.1)


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[SwitchedLedger]:
    switched = SwitchedLedger(await SqliteLedger.open(tmp_path))
    yield switched
    await switched.aclose()


@asynccontextmanager
async def reserve_on(
    ledger: SwitchedLedger,
    data_dir: Path,
    size: int = 64_000,
    namespaces: tuple[str, ...] = ("default",),
) -> AsyncIterator[ReserveDispenser]:
    reserve = await ReserveDispenser.open(
        ledger,
        data_dir=data_dir,
        slots=4,
        size=size,
        namespaces=namespaces,
        instance_id="test",
        location=LOCATION,
        witness_dir=data_dir.parent / "shm",
    )
    try:
        yield reserve
    finally:
        await reserve.aclose()


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def journal_mark(data_dir: Path, namespace: str, start: int) -> int:
    return (
        replay((data_dir / JOURNAL_NAME.format(0)).read_bytes()).reserves[(namespace, start)].mark
    )


def ledger_rows(tmp_path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp_path / LEDGER_FILENAME) as db:
        return db.execute(sql).fetchall()


async def test_nothing_is_served_above_the_journaled_mark(
    ledger: SwitchedLedger, tmp_path: Path
) -> None:
    """Every range the reserve returns lies at or below the mark already on disk, and the
    mark is written once per chunk (1/64 of the reserve), not once per request."""
    data_dir = tmp_path / "data"
    async with reserve_on(ledger, data_dir) as reserve:
        await until(lambda: reserve.remaining("default") > 0)
        ledger.down = True  # as in an outage: the keeper cannot replace it meanwhile
        rng, served = random.Random(1), []
        while reserve.remaining("default") >= 200:
            granted = await reserve.allocate("default", rng.randint(1, 200))
            assert granted.end <= journal_mark(data_dir, "default", 1)
            served.append(Record.of(granted))
        marks = (data_dir / JOURNAL_NAME.format(0)).read_bytes().count(b'"type":"mark"')
    assert check(served).ok
    assert sum(r.size for r in served) > 60_000 and marks <= 64 + 2


async def test_concurrent_requests_get_disjoint_exact_ranges(
    ledger: SwitchedLedger, tmp_path: Path
) -> None:
    """Hundreds of concurrent requests waiting on the same mark writes each get their own
    range of exactly the size asked; once the reserve runs out they are refused cleanly."""
    async with reserve_on(ledger, tmp_path / "data", size=50_000) as reserve:
        await until(lambda: reserve.remaining("default") > 0)
        ledger.down = True
        sizes = [random.Random(i).randint(1, 300) for i in range(600)]
        results = await asyncio.gather(
            *(reserve.allocate("default", size) for size in sizes), return_exceptions=True
        )
    served = [
        Record.of(r, size) for r, size in zip(results, sizes, strict=True) if isinstance(r, IdRange)
    ]
    refused = [r for r in results if not isinstance(r, IdRange)]
    assert check(served).ok and served and refused
    assert all(isinstance(r, ReserveExhausted) for r in refused)


async def test_a_restart_resumes_above_the_mark(ledger: SwitchedLedger, tmp_path: Path) -> None:
    """A process that stops mid-reserve (nothing written at exit, as after a crash) is
    followed by one that serves strictly above everything the first one served."""
    data_dir = tmp_path / "data"
    async with reserve_on(ledger, data_dir) as first:
        await until(lambda: first.remaining("default") > 0)
        ledger.down = True
        before = [Record.of(await first.allocate("default", 77)) for _ in range(100)]
    mark = journal_mark(data_dir, "default", 1)
    async with reserve_on(ledger, data_dir) as second:
        after = [Record.of(await second.allocate("default", 77)) for _ in range(100)]
    assert check(before + after).ok
    assert max(r.end for r in before) <= mark
    assert min(r.start for r in after) == mark + 1


async def test_usage_is_recorded_and_the_reserve_refilled_when_the_ledger_returns(
    ledger: SwitchedLedger, tmp_path: Path
) -> None:
    """Served from while the ledger is down, the reserve is retired once it answers again:
    its usage goes to the audit trail, the unused tail is counted as waste, and a fresh
    reserve (granted again with kind reserve) replaces it."""
    async with reserve_on(ledger, tmp_path / "data", size=10_000) as reserve:
        await until(lambda: reserve.remaining("default") > 0)
        ledger.down = True
        served = [await reserve.allocate("default", 30) for _ in range(10)]
        await until(lambda: reserve.last_error is not None)  # the keeper tried, and failed
        assert reserve.usages_recorded == 0
        ledger.down = False
        await until(lambda: reserve.usages_recorded == 1)
        fresh = await reserve.allocate("default", 30)
        snapshot = reserve.snapshot()
    assert fresh.start > 10_000  # from the new reserve, above the old one
    assert snapshot.ids_wasted == 10_000 - 300 and snapshot.reserves_taken == 2
    assert snapshot.last_error is None
    (usage,) = ledger_rows(
        tmp_path, "SELECT start_id, end_id, used_end_id, note FROM reserve_usage"
    )
    assert usage == (1, 10_000, served[-1].end, "replaced")
    grants = ledger_rows(tmp_path, "SELECT kind, count(*) FROM grants GROUP BY kind")
    assert grants == [(GRANT_RESERVE, 2)]


async def test_missing_and_exhausted_reserves_refuse_with_their_own_codes(
    ledger: SwitchedLedger, tmp_path: Path
) -> None:
    """With no reserve yet the layer says reserve_unavailable; once used up,
    reserve_exhausted, with the IDs left and asked for."""
    ledger.down = True
    async with reserve_on(ledger, tmp_path / "data", size=100) as reserve:
        with pytest.raises(ReserveUnavailable) as none_yet:
            await reserve.allocate("default", 1)
        assert none_yet.value.code == "reserve_unavailable"
        with pytest.raises(ReserveUnavailable):
            await reserve.ping()
        ledger.down = False
        await until(lambda: reserve.remaining("default") == 100)
        ledger.down = True
        await reserve.allocate("default", 60)
        with pytest.raises(ReserveExhausted, match=r"40 IDs left, 41 asked for") as used_up:
            await reserve.allocate("default", 41)
        assert used_up.value.code == "reserve_exhausted"
        await reserve.allocate("default", 40)
        with pytest.raises(ReserveExhausted):
            await reserve.ping()


async def test_namespaces_served_by_any_layer_get_a_reserve(
    ledger: SwitchedLedger, tmp_path: Path
) -> None:
    """A namespace the allocator served (from whichever layer) gets its own reserve, taken
    in the background, and its rate gives the minutes left."""
    async with reserve_on(ledger, tmp_path / "data", namespaces=()) as reserve:
        reserve.observe("orders", 500)
        await until(lambda: reserve.remaining("orders") > 0)
        entry = reserve.snapshot().namespaces["orders"]
    assert entry.held and entry.ids_per_minute > 0
    assert entry.minutes_left is not None and entry.minutes_left > 0


async def test_reserves_go_to_the_namespaces_served_most(
    ledger: SwitchedLedger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Namespaces that filled the reserve's list and went idle give way to one served more:
    the least served one's reserve is retired as evicted (journaled, its usage recorded, its
    tail wasted and never served from again), and the busy namespace gets a reserve; the
    pinned namespace keeps its own."""
    monkeypatch.setattr(reserve_module, "MAX_NAMESPACES", 3)
    monkeypatch.setattr(reserve_module, "MIN_HOLD", 0.0, raising=False)
    data_dir = tmp_path / "data"
    async with reserve_on(ledger, data_dir, size=1000) as reserve:
        reserve.observe("default", 5)
        reserve.observe("early-1", 1)
        reserve.observe("early-2", 5)
        await until(lambda: reserve.remaining("early-1") > 0 and reserve.remaining("early-2") > 0)
        evicted = reserve.snapshot().namespaces["early-1"]
        for _ in range(20):
            reserve.observe("busy", 1000)
        await until(lambda: reserve.remaining("busy") > 0)
        await until(lambda: reserve.usages_recorded == 1)
        held = {ns for ns in ("default", "early-1", "early-2", "busy") if reserve.remaining(ns)}
        wasted = reserve.ids_wasted
        with pytest.raises(ReserveUnavailable):
            await reserve.allocate("early-1", 1)
    assert held == {"default", "early-2", "busy"}  # early-1, served least, was evicted
    assert wasted == 1000
    (usage,) = ledger_rows(
        tmp_path, "SELECT namespace, start_id, end_id, used_end_id, note FROM reserve_usage"
    )
    assert evicted.start is not None
    assert usage == ("early-1", evicted.start, evicted.end, evicted.start - 1, "evicted")
    journaled = replay((data_dir / JOURNAL_NAME.format(0)).read_bytes()).reserves
    assert journaled[("early-1", evicted.start)].retired == "evicted"


async def test_the_rates_tracked_are_bounded(ledger: SwitchedLedger, tmp_path: Path) -> None:
    """A flood of namespaces cannot grow the reserve's memory: at most MAX_TRACKED rates and
    MAX_NAMESPACES reserves are kept, and the keeper forgets idle rates to make room."""
    async with reserve_on(ledger, tmp_path / "data", size=10) as reserve:
        for i in range(5 * reserve_module.MAX_TRACKED):
            reserve.observe(f"flood-{i}", 1)
        assert len(reserve._rates) <= reserve_module.MAX_TRACKED
        await until(lambda: len(reserve._wanted) == reserve_module.MAX_NAMESPACES, timeout=20)
        snapshot = reserve.snapshot()
    assert len(snapshot.namespaces) <= reserve_module.MAX_NAMESPACES


async def test_a_journal_that_cannot_be_written_stops_the_reserve(
    ledger: SwitchedLedger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a failed journal write (disk full, I/O error) nothing more is served from the
    reserve in this process, and the health ping says why."""
    async with reserve_on(ledger, tmp_path / "data") as reserve:
        await until(lambda: reserve.remaining("default") > 0)

        def full(records: Any, *, sync: bool = True) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(reserve.journal, "append", full)
        with pytest.raises(ReserveUnavailable, match="No space left"):
            await reserve.allocate("default", 10)
        with pytest.raises(ReserveUnavailable, match="cannot be written"):
            await reserve.ping()
        assert reserve.snapshot().journal_error == "No space left on device"


async def test_a_damaged_journal_is_reported_to_the_ledger_as_abandoned(
    ledger: SwitchedLedger, tmp_path: Path
) -> None:
    """A reserve abandoned because its journal was damaged is never served from; once the
    ledger answers, its abandonment is recorded and a fresh reserve taken."""
    data_dir = tmp_path / "data"
    async with reserve_on(ledger, data_dir, size=1000) as first:
        await until(lambda: first.remaining("default") > 0)
        ledger.down = True
        old = [Record.of(await first.allocate("default", 10)) for _ in range(5)]
    path = data_dir / JOURNAL_NAME.format(0)
    damaged = path.read_bytes()[:-3]
    path.write_bytes(damaged)
    readable_mark = replay(damaged).reserves[("default", 1)].mark
    async with reserve_on(ledger, data_dir, size=1000) as second:
        with pytest.raises(ReserveUnavailable):
            await second.allocate("default", 10)
        assert second.ids_wasted == 1000 - readable_mark
        ledger.down = False
        await until(lambda: second.usages_recorded == 1 and second.remaining("default") > 0)
        new = [Record.of(await second.allocate("default", 10)) for _ in range(5)]
    assert check(old + new).ok and min(r.start for r in new) > 1000
    ((note,),) = ledger_rows(tmp_path, "SELECT note FROM reserve_usage")
    assert note.startswith("journal damaged")


async def test_a_hanging_ledger_leaves_the_reserve_its_time() -> None:
    """The layers before the reserve stop early enough that the reserve always gets its
    guaranteed share of the budget, even when one of them hangs."""
    redis, ledger, reserve = FakeDispenser("redis"), FakeDispenser("ledger"), FakeDispenser("r")
    redis.mode, ledger.mode = "fail", "hang"
    allocator = Allocator(
        [
            Layer(redis, CircuitBreaker(), 0.2),
            Layer(ledger, CircuitBreaker(), 10.0),
            Layer(reserve, CircuitBreaker(), 0.2, guaranteed=0.2),
        ],
        timeout=0.6,
        metrics=Counters(),
    )
    started = time.perf_counter()
    allocation = await allocator.allocate("default", 5)
    assert allocation.source == "r" and time.perf_counter() - started < 0.6


async def test_the_service_degrades_then_refuses_with_reserve_exhausted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With its ledger gone, the service serves from the reserve and /health says degraded
    with the remaining reserve and the minutes it lasts; once the reserve is used up,
    requests get a 503 reserve_exhausted with Retry-After, and /health turns 503."""
    monkeypatch.setattr(lease_module, "LEASE_GROWTH", 1)  # every request needs the ledger
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path / "data",
        instance_id="test",
        reserve="on",
        reserve_size=5_000,
        lease_size=100,
        breaker_failure_threshold=1,
        health_max_age=0,  # /health asks the layers at every read, not at the next probe
    )
    app = create_app(settings)
    async with running(app) as http:
        service = app.api.state.service
        await until(lambda: service.reserve.remaining("default") > 0)
        first = (await http.post("/allocate", json={"size": 100})).json()
        await service.ledger.aclose()
        responses = [await http.post("/allocate", json={"size": 100}) for _ in range(30)]
        down = (await http.get("/health")).json()
        while (await http.post("/allocate", json={"size": 100})).status_code == 200:
            pass
        refused = await http.post("/allocate", json={"size": 100})
        exhausted = await http.get("/health")
        metrics = (await http.get("/metrics", headers={"accept": "text/plain"})).text
    served = [r.json() for r in responses if r.status_code == 200]
    assert first["source"] == "sqlite"
    assert {b["source"] for b in served[1:]} == {"emergency_reserve"}
    assert check([Record.from_json(b) for b in [first, *served]]).ok
    assert down["status"] == "degraded" and down["reserve"]["serving"] is True
    entry = down["reserve"]["namespaces"]["default"]
    assert entry["remaining"] < 5_000 and entry["minutes_left"] is not None
    assert down["metrics"]["reserve_allocations"] > 0
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "reserve_exhausted"
    assert exhausted.status_code == 503 and exhausted.json()["status"] == "unhealthy"
    assert 'keygen_reserve_remaining_ids{namespace="default"} 0.0' in metrics
    assert 'keygen_ids_wasted_total{source="emergency_reserve"}' in metrics


def test_the_reserve_is_on_by_default_in_the_full_topology() -> None:
    """'auto' runs the reserve with Sentinels and PostgreSQL, not with the embedded ledger
    or PostgreSQL alone; 'on' and 'off' decide regardless; its budget is at most half."""
    url = "postgresql://u@h/db"
    assert Settings(_env_file=None, redis_sentinel_hosts="h:1", database_url=url).reserve_enabled
    assert not Settings(_env_file=None, database_url=url).reserve_enabled
    assert not Settings(_env_file=None, redis_sentinel_hosts="h:1").reserve_enabled
    assert Settings(_env_file=None, reserve="on").reserve_enabled
    assert not Settings(
        _env_file=None, redis_sentinel_hosts="h:1", database_url=url, reserve="off"
    ).reserve_enabled
    assert Settings(_env_file=None, allocation_timeout=0.4).reserve_budget == 0.2
    settings = Settings(_env_file=None, reserve_namespaces=" default, orders,default")
    assert settings.reserve_namespace_list == ("default", "orders")
    with pytest.raises(ValueError, match="not a valid namespace"):
        Settings(_env_file=None, reserve_namespaces="Bad Name")


async def test_postgresql_records_usage_once_and_raises_the_counter(postgres_url: str) -> None:
    """PostgreSQL records a reserve's usage once however often it is reported, raises the
    counter above the reserve (as after a restore from an older backup), and says whether
    it granted the reserve."""
    ledger = await PostgresLedger.open(postgres_url)
    try:
        granted = await ledger.grant("default", 1000, kind=GRANT_RESERVE, holder="x/reserve-0")
        usage = ReserveUsage("default", granted.start, granted.end, 400, "x/reserve-0", "replaced")
        assert await ledger.record_reserve_usage(usage) is True
        assert await ledger.record_reserve_usage(usage) is True  # again: nothing changes
        foreign = ReserveUsage("orders", 5, 9_000, 4, "y/reserve-1", "journal damaged")
        assert await ledger.record_reserve_usage(foreign) is False
        after = await ledger.grant("orders", 1, kind=GRANT_RESERVE, holder="z")
    finally:
        await ledger.aclose()
    conn = await asyncpg.connect(postgres_url)
    try:
        rows = await conn.fetch(
            "SELECT namespace, used_end_id FROM keygen_reserve_usage ORDER BY namespace"
        )
    finally:
        await conn.close()
    assert [tuple(r) for r in rows] == [("default", 400), ("orders", 4)]
    assert after.start == 9_001


async def test_a_replay_the_witness_missed_is_stopped_by_the_ledgers_marks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A journal put back to an earlier state together with its witness (beyond what a
    restore of the data dir can do) is resumed, but the marks the first process recorded in
    the ledger are above where it resumes: the keeper retires that reserve before it serves
    and takes a fresh one above it."""
    ledger = await SqliteLedger.open(tmp_path / "ledger")
    data, witness_dir = tmp_path / "data", tmp_path / "shm"

    async def opened() -> ReserveDispenser:
        return await ReserveDispenser.open(
            ledger,
            data_dir=data,
            slots=1,
            size=64_000,
            namespaces=("default",),
            instance_id="test",
            location=LOCATION,
            witness_dir=witness_dir,
        )

    first = await opened()
    await until(lambda: first.remaining("default") > 0)
    held = first.snapshot().namespaces["default"]
    path = data / JOURNAL_NAME.format(0)
    earlier = path.read_bytes()
    served = [await first.allocate("default", 500) for _ in range(20)]
    await until(lambda: first.usages_recorded == 1)  # replaced once quiet: marks recorded
    await first.aclose()
    path.write_bytes(earlier)
    Witness.of(path, witness_dir).reset(earlier)
    second = await opened()
    try:
        await until(lambda: second.snapshot().namespaces["default"].start not in (None, held.start))
        fresh = second.snapshot().namespaces["default"]
        marks = await ledger.reserve_marks()
    finally:
        await second.aclose()
        await ledger.aclose()
    assert "the journal was replayed" in caplog.text
    assert fresh.start is not None and fresh.start > max(r.end for r in served)
    assert max(m.mark for m in marks if m.start == held.start) >= max(r.end for r in served)
    assert replayed_reserves(marks) == []  # the second never served from it


async def test_a_journal_path_that_cannot_be_used_is_one_line_naming_the_setting(
    ledger: SwitchedLedger, tmp_path: Path
) -> None:
    """A data dir that is a file (or unwritable) refuses start-up with one line naming
    KEYGEN_DATA_DIR and the cause, not an OSError from deep in the journal."""
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ReserveUnavailable, match=r"KEYGEN_DATA_DIR.*Not a directory"):
        await ReserveDispenser.open(
            ledger,
            data_dir=tmp_path / "file" / "data",
            slots=1,
            size=1000,
            namespaces=("default",),
            instance_id="test",
            location=LOCATION,
        )
