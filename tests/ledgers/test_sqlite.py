"""The embedded SQLite ledger: exact, forward-only, durable, and safe across processes."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from keygen.checker import Record, check
from keygen.constants import MAX_ID
from keygen.errors import LedgerUnavailable, NamespaceExhausted
from keygen.ledgers.sqlite import LEDGER_FILENAME, SqliteLedger

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
