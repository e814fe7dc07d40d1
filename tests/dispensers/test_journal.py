"""The reserve journal: records, slots and their locks, and what it does with damage."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keygen.dispensers.journal import COMPACT_AFTER, JOURNAL_NAME, Journal
from keygen.dispensers.journal_records import JournalReserve, encode, replay
from keygen.dispensers.journal_witness import Witness
from keygen.errors import JournalLocked

LEDGER = "postgresql://127.0.0.1:5432/keygen"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def opened(data_dir: Path) -> Iterator[list[Journal]]:
    """Journals opened by a test, closed after it."""
    journals: list[Journal] = []
    yield journals
    for journal in journals:
        journal.close()


def open_journal(
    data_dir: Path,
    opened: list[Journal],
    *,
    slots: int = 4,
    location: str = LEDGER,
    witness_dir: Path | None = None,
) -> Journal:
    journal = Journal.open(
        data_dir,
        slots=slots,
        location=location,
        owner="test",
        witness_dir=witness_dir or data_dir.parent / "shm",
    )
    opened.append(journal)
    return journal


def grant(journal: Journal, namespace: str, start: int, end: int, *marks: int) -> None:
    key = {"namespace": namespace, "start": start}
    journal.append(
        [
            {
                "type": "reserve",
                **key,
                "end": end,
                "ledger": journal.location,
                "at": 1.0,
                "owner": journal.data_id,
            }
        ]
    )
    for mark in marks:
        journal.append([{"type": "mark", **key, "mark": mark}])


def sample_journal() -> bytes:
    """A journal with two namespaces, marks, a retired and a synced reserve."""
    records = [
        {"type": "open", "version": 1, "owner": "a b", "pid": 1, "at": 1.0},
        {
            "type": "reserve",
            "namespace": "default",
            "start": 1,
            "end": 1000,
            "ledger": LEDGER,
            "at": 1.0,
        },
        {"type": "mark", "namespace": "default", "start": 1, "mark": 100},
        {
            "type": "reserve",
            "namespace": "orders",
            "start": 1,
            "end": 500,
            "ledger": LEDGER,
            "at": 1.0,
        },
        {"type": "mark", "namespace": "default", "start": 1, "mark": 200},
        {
            "type": "reserve",
            "namespace": "default",
            "start": 5001,
            "end": 6000,
            "ledger": LEDGER,
            "at": 2.0,
        },
        {"type": "retire", "namespace": "default", "start": 1, "reason": "replaced"},
        {"type": "mark", "namespace": "orders", "start": 1, "mark": 50},
        {"type": "synced", "namespace": "default", "start": 1, "used_end": 150},
    ]
    return b"".join(encode(record) for record in records)


def test_replay_reads_every_record() -> None:
    """A clean journal replays to its reserves, each with its highest mark and status."""
    result = replay(sample_journal())
    assert result.damage is None and result.records == 9
    default, orders, fresh = result.reserves.values()
    assert (default.mark, default.retired, default.synced) == (200, "replaced", True)
    assert (orders.mark, orders.retired) == (50, None)
    assert (fresh.start, fresh.mark, fresh.retired) == (5001, 5000, None)


def test_a_restart_resumes_above_the_mark(data_dir: Path, opened: list[Journal]) -> None:
    """Reopened, the journal gives back each reserve with the highest mark written."""
    journal = open_journal(data_dir, opened)
    grant(journal, "default", 1, 1000, 64, 128)
    grant(journal, "orders", 1001, 3000)
    journal.close()
    again = open_journal(data_dir, opened)
    assert again.slot == 0 and again.abandoned_ids == 0
    assert [(r.namespace, r.start, r.end, r.mark, r.retired) for r in again.reserves] == [
        ("default", 1, 1000, 128, None),
        ("orders", 1001, 3000, 1000, None),
    ]


def test_each_process_gets_its_own_slot(data_dir: Path, opened: list[Journal]) -> None:
    """A slot whose journal is locked is skipped: the next opener takes the next slot."""
    first = open_journal(data_dir, opened)
    second = open_journal(data_dir, opened)
    assert (first.slot, second.slot) == (0, 1)
    first.close()
    assert open_journal(data_dir, opened).slot == 0  # free again


def test_every_slot_locked_refuses_and_says_why(data_dir: Path, opened: list[Journal]) -> None:
    """With every slot locked, opening fails with a message naming the data dir, the holder
    and the way out."""
    open_journal(data_dir, opened, slots=1)
    with pytest.raises(JournalLocked) as refused:
        open_journal(data_dir, opened, slots=1)
    message = str(refused.value)
    assert str(data_dir) in message and "locked by another running process" in message
    assert "reserve-0.journal: pid" in message and "KEYGEN_RESERVE_SLOTS" in message


def test_the_lock_holds_against_another_process(data_dir: Path, opened: list[Journal]) -> None:
    """Another process cannot lock a held journal, and can once it is released."""
    journal = open_journal(data_dir, opened)
    probe = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "except BlockingIOError:\n    sys.exit(3)\n"
    )

    def try_lock() -> int:
        return subprocess.run(
            [sys.executable, "-c", probe, str(journal.path)], check=False, timeout=30
        ).returncode

    assert try_lock() == 3
    journal.close()
    assert try_lock() == 0


def test_a_torn_last_record_abandons_every_open_reserve(
    data_dir: Path, opened: list[Journal], caplog: pytest.LogCaptureFixture
) -> None:
    """A journal cut in the middle of its last record is not trusted: every open reserve is
    retired (never served again), a clear error is logged, and the damaged file is kept."""
    journal = open_journal(data_dir, opened)
    grant(journal, "default", 1, 1000, 100)
    grant(journal, "orders", 1001, 2000, 1500)
    journal.close()
    path = data_dir / JOURNAL_NAME.format(0)
    data = path.read_bytes()
    path.write_bytes(data[:-7])
    with caplog.at_level(logging.ERROR):
        again = open_journal(data_dir, opened)
    assert [(r.namespace, r.mark) for r in again.reserves] == [
        ("default", 100),
        ("orders", 1001 - 1),
    ]
    assert all(r.retired and "journal damaged" in r.retired for r in again.reserves)
    assert "is damaged" in caplog.text and "never served from again" in caplog.text
    assert again.abandoned_ids == (1000 - 100) + (2000 - 1000)
    copies = list(data_dir.glob("reserve-0.journal.damaged-*"))
    assert len(copies) == 1 and copies[0].read_bytes() == data[:-7]
    clean = replay(path.read_bytes())  # rewritten without the damage, abandonment recorded
    assert clean.damage is None
    assert {r.retired is not None for r in clean.reserves.values()} == {True}


def test_a_corrupt_record_in_the_middle_is_detected(data_dir: Path, opened: list[Journal]) -> None:
    """A record whose bytes changed fails its checksum, wherever it is."""
    journal = open_journal(data_dir, opened)
    grant(journal, "default", 1, 1000, 10, 20, 30)
    journal.close()
    path = data_dir / JOURNAL_NAME.format(0)
    path.write_bytes(path.read_bytes().replace(b'"mark":20', b'"mark":21'))
    again = open_journal(data_dir, opened)
    (reserve,) = again.reserves
    assert reserve.retired is not None and "fails its checksum" in reserve.retired


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_every_cut_and_every_flipped_byte_is_noticed(data: st.DataObject) -> None:
    """Cut anywhere but at a record boundary, or with any one byte changed, a journal
    reports damage; cut at a boundary, it replays exactly the records before the cut."""
    journal = sample_journal()
    cut = data.draw(st.integers(0, len(journal)))
    result = replay(journal[:cut])
    at_boundary = cut == 0 or journal[cut - 1 : cut] == b"\n"
    assert (result.damage is None) == at_boundary
    if at_boundary:
        assert result.records == journal[:cut].count(b"\n")
    position = data.draw(st.integers(0, len(journal) - 1))
    flipped = bytearray(journal)
    flipped[position] ^= 1
    assert replay(bytes(flipped)).damage is not None


def test_reserves_of_another_ledger_are_dropped(
    data_dir: Path, opened: list[Journal], caplog: pytest.LogCaptureFixture
) -> None:
    """A reserve granted by another ledger (the URL changed) is never served from."""
    journal = open_journal(data_dir, opened, location="postgresql://old:5432/keygen")
    grant(journal, "default", 1, 1000, 50)
    journal.close()
    with caplog.at_level(logging.WARNING):
        again = open_journal(data_dir, opened)
    assert again.reserves == []
    assert "not this one" in caplog.text and "never served from" in caplog.text


def test_synced_reserves_are_forgotten_and_big_journals_compacted(
    data_dir: Path, opened: list[Journal]
) -> None:
    """Reopening drops reserves already reported to the ledger and compacts a long journal,
    keeping every live reserve and its mark, and the slot stays locked throughout."""
    journal = open_journal(data_dir, opened)
    grant(journal, "default", 1, 1000, 10)
    journal.append(
        [
            {"type": "retire", "namespace": "default", "start": 1, "reason": "x"},
            {"type": "synced", "namespace": "default", "start": 1, "used_end": 10},
        ]
    )
    grant(journal, "default", 1001, 100_000, *range(1001, 1001 + COMPACT_AFTER))
    journal.close()
    again = open_journal(data_dir, opened)
    assert [(r.start, r.mark, r.retired) for r in again.reserves] == [
        (1001, 1000 + COMPACT_AFTER, None)
    ]
    assert again.records < 10
    assert open_journal(data_dir, opened).slot == 1  # the rewritten file is still locked
    assert replay(again.path.read_bytes()).reserves[("default", 1001)].mark == 2024


def test_a_reserve_describes_itself_in_records() -> None:
    """A reserve's records replay to the same reserve."""
    reserve = JournalReserve("default", 10, 99, LEDGER, 50, 3.0, retired="why")
    replayed = replay(b"".join(encode(record) for record in reserve.records()))
    assert replayed.reserves[("default", 10)] == reserve


def test_a_journal_cut_at_a_record_boundary_is_not_trusted(
    data_dir: Path, opened: list[Journal], caplog: pytest.LogCaptureFixture
) -> None:
    """A journal whose last marks are gone, cut cleanly between records, is told from the one
    the process left behind by its witness: its open reserves are abandoned, not resumed."""
    journal = open_journal(data_dir, opened)
    grant(journal, "default", 1, 1000, 100)
    cut = journal.path.stat().st_size
    journal.append([{"type": "mark", "namespace": "default", "start": 1, "mark": 200}])
    journal.close()
    path = data_dir / JOURNAL_NAME.format(0)
    path.write_bytes(path.read_bytes()[:cut])
    assert replay(path.read_bytes()).damage is None  # well-formed: no checksum says so
    with caplog.at_level(logging.WARNING):
        again = open_journal(data_dir, opened)
    (reserve,) = again.reserves
    assert reserve.retired is not None and "journal not verified" in reserve.retired
    assert again.distrusted is not None and "shorter" in again.distrusted
    assert "never served from again" in caplog.text


def test_a_journal_restored_from_an_earlier_copy_is_not_trusted(
    data_dir: Path, opened: list[Journal]
) -> None:
    """A journal copied aside and copied back after the process went on (a restored
    snapshot) is abandoned, even though it is a well-formed journal of this data dir."""
    journal = open_journal(data_dir, opened)
    grant(journal, "default", 1, 1000, 100)
    journal.close()
    earlier = (data_dir / JOURNAL_NAME.format(0)).read_bytes()
    journal = open_journal(data_dir, opened)
    journal.append([{"type": "mark", "namespace": "default", "start": 1, "mark": 300}])
    journal.close()
    (data_dir / JOURNAL_NAME.format(0)).write_bytes(earlier)
    (reserve,) = open_journal(data_dir, opened).reserves
    assert reserve.retired is not None and "journal not verified" in reserve.retired


def test_a_journal_without_a_witness_of_this_boot_is_not_trusted(
    data_dir: Path, opened: list[Journal], tmp_path: Path
) -> None:
    """After a reboot (the memory-backed witness gone) or on a data dir copied or moved, the
    journal's open reserves are abandoned; retired ones are still reported."""
    journal = open_journal(data_dir, opened)
    grant(journal, "default", 1, 1000, 100)
    journal.close()
    again = open_journal(data_dir, opened, witness_dir=tmp_path / "after-a-reboot")
    (reserve,) = again.reserves
    assert reserve.retired is not None and "this boot never wrote it" in reserve.retired
    assert again.abandoned_ids == 900


def test_a_journal_ahead_of_its_witness_is_trusted(data_dir: Path, opened: list[Journal]) -> None:
    """A crash between a mark's fsync and the witness' write leaves the journal longer than
    its witness says: that journal is ahead of what was handed out, and is resumed."""
    journal = open_journal(data_dir, opened)
    grant(journal, "default", 1, 1000, 100)
    journal.close()
    path = data_dir / JOURNAL_NAME.format(0)
    with path.open("ab") as file:  # as if the witness was never told
        file.write(encode({"type": "mark", "namespace": "default", "start": 1, "mark": 150}))
    (reserve,) = open_journal(data_dir, opened).reserves
    assert (reserve.mark, reserve.retired) == (150, None)


def test_another_data_dirs_journal_is_dropped(
    tmp_path: Path, opened: list[Journal], caplog: pytest.LogCaptureFixture
) -> None:
    """A journal copied into another instance's data dir names the data dir its reserves were
    granted to: they are dropped there, never served, even with a witness that vouches."""
    ours = open_journal(tmp_path / "ours", opened)
    ours.close()
    theirs = open_journal(tmp_path / "theirs", opened)
    grant(theirs, "default", 1, 1000, 100)
    theirs.close()
    copy = tmp_path / "ours" / JOURNAL_NAME.format(0)
    copy.write_bytes(theirs.path.read_bytes())
    # Even vouched for by a witness, the owner is not this data dir.
    Witness.of(copy, tmp_path / "shm").reset(copy.read_bytes())
    with caplog.at_level(logging.WARNING):
        again = open_journal(tmp_path / "ours", opened)
    assert again.reserves == [] and "granted to another data dir" in caplog.text
