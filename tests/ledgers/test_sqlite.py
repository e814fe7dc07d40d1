"""The embedded SQLite ledger: exact, forward-only, durable, and safe across processes."""

from __future__ import annotations

import asyncio
import multiprocessing
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from keygen.api import create_app
from keygen.checker import Record, check
from keygen.config import Settings
from keygen.constants import MAX_ID
from keygen.errors import LedgerUnavailable, NamespaceExhausted, TooManyNamespaces
from keygen.ledgers import retention
from keygen.ledgers.ledger_identity import IDENTITY_FILENAME
from keygen.ledgers.retention import prune
from keygen.ledgers.sqlite import LEDGER_FILENAME, SqliteLedger
from tests.support.app import running

pytestmark = pytest.mark.anyio


async def test_grants_are_consecutive_and_audited(tmp_path: Path) -> None:
    """Grants continue where the last one ended, per namespace, each with an audit row."""
    ledger = await SqliteLedger.open(tmp_path)
    try:
        first = await ledger.grant("a", 10, kind="lease", holder="h1")
        second = await ledger.grant("a", 5, kind="direct", holder="h2")
        other = await ledger.grant("b", 3, kind="lease", holder="h1")
        assert (first.start, first.end) == (1, 10)
        assert (second.start, second.end) == (11, 15)
        assert (other.start, other.end) == (1, 3)
        status = {s.namespace: s for s in await ledger.status()}
        assert status["a"].last_id == 15 and status["a"].grants == 2
        assert status["a"].next_id == 16 and status["a"].headroom == MAX_ID - 15
    finally:
        await ledger.aclose()
    rows = (
        sqlite3.connect(tmp_path / LEDGER_FILENAME)
        .execute("SELECT namespace, start_id, end_id, kind, holder FROM grants ORDER BY id")
        .fetchall()
    )
    assert rows == [
        ("a", 1, 10, "lease", "h1"),
        ("a", 11, 15, "direct", "h2"),
        ("b", 1, 3, "lease", "h1"),
    ]


async def test_survives_reopen(tmp_path: Path) -> None:
    """A reopened ledger continues after everything granted before it was closed."""
    ledger = await SqliteLedger.open(tmp_path)
    await ledger.grant("default", 100, kind="lease", holder="h")
    await ledger.aclose()
    ledger = await SqliteLedger.open(tmp_path)
    try:
        assert (await ledger.grant("default", 1, kind="lease", holder="h")).start == 101
    finally:
        await ledger.aclose()


async def test_refuses_to_pass_max_id(tmp_path: Path) -> None:
    """A grant that would pass 2**63-1 is refused with the exact remaining count."""
    ledger = await SqliteLedger.open(tmp_path)
    try:
        await ledger.advance_to("edge", MAX_ID - 5)
        with pytest.raises(NamespaceExhausted) as caught:
            await ledger.grant("edge", 6, kind="direct", holder="h")
        assert caught.value.remaining == 5
        last = await ledger.grant("edge", 5, kind="direct", holder="h")
        assert (last.start, last.end) == (MAX_ID - 4, MAX_ID)
        with pytest.raises(NamespaceExhausted):
            await ledger.grant("edge", 1, kind="direct", holder="h")
    finally:
        await ledger.aclose()


async def test_advance_never_moves_backwards(tmp_path: Path) -> None:
    """advance_to raises the counter, and a lower value leaves it where it is."""
    ledger = await SqliteLedger.open(tmp_path)
    try:
        assert await ledger.advance_to("a", 1000) == 1000
        assert await ledger.advance_to("a", 10) == 1000
        assert (await ledger.grant("a", 1, kind="direct", holder="h")).start == 1001
    finally:
        await ledger.aclose()


async def test_unusable_file_is_ledger_unavailable(tmp_path: Path) -> None:
    """A ledger path that cannot be a database raises LedgerUnavailable, not sqlite3.Error."""
    (tmp_path / LEDGER_FILENAME).write_bytes(b"this is not a database" * 100)
    with pytest.raises(LedgerUnavailable):
        await SqliteLedger.open(tmp_path)


async def test_closed_ledger_is_unavailable(tmp_path: Path) -> None:
    """Using a closed ledger is a LedgerUnavailable, which the allocator can fall back from."""
    ledger = await SqliteLedger.open(tmp_path)
    await ledger.aclose()
    with pytest.raises(LedgerUnavailable):
        await ledger.grant("a", 1, kind="direct", holder="h")


def _grant_many(
    data_dir: str, count: int, out: multiprocessing.Queue[list[tuple[int, int]]]
) -> None:
    async def run() -> list[tuple[int, int]]:
        ledger = await SqliteLedger.open(Path(data_dir))
        try:
            spans = []
            for size in range(1, count + 1):
                granted = await ledger.grant("shared", size, kind="lease", holder="p")
                spans.append((granted.start, granted.end))
            return spans
        finally:
            await ledger.aclose()

    out.put(asyncio.run(run()))


def test_processes_sharing_the_file_never_overlap(tmp_path: Path) -> None:
    """Four processes granting from one file at once get disjoint spans (BEGIN IMMEDIATE)."""
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[list[tuple[int, int]]] = context.Queue()
    workers = [
        context.Process(target=_grant_many, args=(str(tmp_path), 60, queue)) for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    spans = [span for _ in workers for span in queue.get(timeout=60)]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    verdict = check(Record("shared", s, e, e - s + 1) for s, e in spans)
    assert verdict.ok, verdict.summary()
    assert verdict.ranges == 240
    assert max(e for _, e in spans) == 4 * sum(range(1, 61))  # nothing skipped, nothing lost


async def test_a_namespace_past_the_bound_is_refused_and_nothing_granted(tmp_path: Path) -> None:
    """With max_namespaces reached, a grant that would create a namespace is refused with
    TooManyNamespaces and leaves no counter and no audit row; existing namespaces go on."""
    ledger = await SqliteLedger.open(tmp_path, max_namespaces=3)
    try:
        for namespace in ("a", "b", "c"):
            await ledger.grant(namespace, 10, kind="lease", holder="h")
        with pytest.raises(TooManyNamespaces) as refused:
            await ledger.grant("d", 10, kind="lease", holder="h")
        assert refused.value.status_code == 409 and refused.value.code == "too_many_namespaces"
        assert (await ledger.grant("a", 5, kind="lease", holder="h")).start == 11
        assert [s.namespace for s in await ledger.status()] == ["a", "b", "c"]
        assert all(g.namespace != "d" for g in await ledger.grants())
    finally:
        await ledger.aclose()


async def test_over_http_a_namespace_past_the_bound_gets_a_409(tmp_path: Path) -> None:
    """KEYGEN_MAX_NAMESPACES reaches the ledger: the request creating one namespace too many
    gets a JSON 409 too_many_namespaces, and nothing is allocated for it."""
    settings = Settings(
        _env_file=None, data_dir=tmp_path / "data", instance_id="test", max_namespaces=2
    )
    async with running(create_app(settings)) as http:
        served = [(await http.post("/allocate", json={"namespace": ns})) for ns in ("a", "b")]
        refused = await http.post("/allocate", json={"namespace": "c"})
        again = await http.post("/allocate", json={"namespace": "a"})
    assert [r.status_code for r in served] == [200, 200] and again.status_code == 200
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "too_many_namespaces"
    with sqlite3.connect(tmp_path / "data" / LEDGER_FILENAME) as db:
        assert db.execute("SELECT count(*) FROM counters WHERE namespace = 'c'").fetchone() == (0,)


def _age(path: Path, days: float, where: str = "1 = 1") -> None:
    with sqlite3.connect(path) as db:
        db.execute(f"UPDATE grants SET granted_at = granted_at - ? WHERE {where}", (days * 86400,))


async def test_retention_prunes_old_rows_but_never_the_evidence(tmp_path: Path) -> None:
    """Rows older than the retention are deleted in small batches, except each namespace's
    latest grant and every reserve grant; counters are untouched and grants go on above."""
    ledger = await SqliteLedger.open(tmp_path)
    try:
        for _ in range(1200):
            await ledger.grant("a", 10, kind="lease", holder="h")
        await ledger.grant("a", 10, kind="reserve", holder="h/reserve-0")
        await ledger.grant("a", 10, kind="direct", holder="h")  # old, and no longer the latest
        await ledger.grant("b", 10, kind="lease", holder="h")  # the latest (and only) of "b"
        _age(ledger.path, 100)
        await ledger.grant("a", 10, kind="lease", holder="h")  # young, and the latest of "a"
        before = {s.namespace: s.last_id for s in await ledger.status()}
        deleted = await prune(ledger.prune_batch, time.time() - 90 * 86400, batch=100)
        kept = await ledger.grants()
        after = {s.namespace: s.last_id for s in await ledger.status()}
        assert (await ledger.grant("a", 1, kind="lease", holder="h")).start == before["a"] + 1
    finally:
        await ledger.aclose()
    assert deleted == 1201
    assert [(g.namespace, g.kind) for g in kept] == [
        ("a", "reserve"),
        ("b", "lease"),
        ("a", "lease"),
    ]
    assert after == before


async def test_the_retention_task_prunes_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ledger opened with a retention prunes its audit trail by itself, and stops when
    closed."""
    monkeypatch.setattr(retention, "PRUNE_FIRST_DELAY", 0.0)
    ledger = await SqliteLedger.open(tmp_path)
    for _ in range(5):
        await ledger.grant("a", 10, kind="lease", holder="h")
    await ledger.aclose()
    _age(tmp_path / LEDGER_FILENAME, 10)
    ledger = await SqliteLedger.open(tmp_path, audit_retention_days=7)
    try:
        assert ledger.retention is not None
        async with asyncio.timeout(5):
            while ledger.retention.pruned < 4:
                await asyncio.sleep(0.01)
        assert len(await ledger.grants()) == 1
    finally:
        await ledger.aclose()


async def test_a_lost_or_replaced_ledger_file_refuses_to_open(tmp_path: Path) -> None:
    """The data dir remembers its ledger's identity: with ledger.sqlite3 deleted, or replaced
    by another ledger's file, opening refuses and says why, and makes no ledger afresh; a
    ledger made before identities takes the data dir's."""
    data, other = tmp_path / "data", tmp_path / "other"
    ledger = await SqliteLedger.open(data)
    await ledger.grant("a", 10, kind="lease", holder="h")
    await ledger.aclose()
    assert (data / IDENTITY_FILENAME).read_text().strip() == ledger.identity
    await (await SqliteLedger.open(other)).aclose()
    shutil.copyfile(data / LEDGER_FILENAME, tmp_path / "kept.sqlite3")
    for name in (LEDGER_FILENAME, f"{LEDGER_FILENAME}-wal", f"{LEDGER_FILENAME}-shm"):
        (data / name).unlink(missing_ok=True)
    with pytest.raises(LedgerUnavailable, match=r"is missing.*keygen restore"):
        await SqliteLedger.open(data)
    assert not (data / LEDGER_FILENAME).exists()
    shutil.copyfile(other / LEDGER_FILENAME, data / LEDGER_FILENAME)
    with pytest.raises(LedgerUnavailable, match="was used with ledger"):
        await SqliteLedger.open(data)
    shutil.copyfile(tmp_path / "kept.sqlite3", data / LEDGER_FILENAME)
    with sqlite3.connect(data / LEDGER_FILENAME) as db:
        db.execute("DELETE FROM ledger_identity")  # as a ledger made before identities
    again = await SqliteLedger.open(data)
    await again.aclose()
    assert again.identity == ledger.identity
