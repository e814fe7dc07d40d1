"""The emergency reserve's journal: an append-only file per reserve slot, locked by its owner.

The file is ``<KEYGEN_DATA_DIR>/reserve-<slot>.journal``. A process takes the first slot whose
file it can lock (``flock(LOCK_EX | LOCK_NB)``), so each worker of ``keygen serve --workers N``
gets a journal of its own and no two processes ever serve from one reserve. The lock lasts as
long as the process (a crash releases it); the next process to take the slot replays the
journal and carries on where it stopped. When every slot is locked, start-up is refused.

Each line is one record (written and replayed by ``journal_records.py``): the CRC32 of the
JSON text as 8 hex digits, a space, the JSON, a newline::

    5c8e1d0a {"end":5000000000,"ledger":"postgresql://db:5432/keygen","namespace":"default",...}

Records: ``open`` (a process took the slot), ``reserve`` (the ledger granted a reserve to this
slot), ``mark`` (IDs of the reserve up to ``mark`` may have been handed out: written and
fsynced *before* any of them is), ``retire`` (the reserve is never served from again),
``synced`` (its usage is in the ledger's audit trail: the journal may forget it).

Anything else is *damage*: a line without its newline, a checksum that does not match, text
that is not JSON, or a record that makes no sense where it stands. A torn last append cannot
be told from a file cut short (which would have lost fsynced marks), so a damaged journal is
not trusted at all: every reserve it names is retired, wasted, never served from again, the
damaged file is copied aside, and the journal is rewritten without the damage. Reserves of
another ledger (``KEYGEN_DATABASE_URL`` changed) are dropped the same way, never served.

A well-formed journal may still not be this data dir's latest: cut at a record boundary,
restored from an earlier copy, or copied from another instance. So each ``reserve`` record
names its *owner*, the identity of the data dir it was granted to (``data.id``, made on first
use): reserves of another owner are dropped, never served. And a journal is trusted only when
its witness (``journal_witness.py``) shows it is exactly what this boot last wrote; otherwise
its reserves are abandoned like a damaged journal's (``docs/reserve.md``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

from keygen.dispensers.journal_files import data_dir_id, lock, owner_of
from keygen.dispensers.journal_records import (
    JOURNAL_VERSION,
    JournalReserve,
    Record,
    encode,
    replay,
)
from keygen.dispensers.journal_witness import Witness
from keygen.errors import JournalLocked
from keygen.files import fsync_dir, write_all

log = logging.getLogger(__name__)

JOURNAL_NAME: Final = "reserve-{}.journal"
#: A journal with more records than this is rewritten (compacted) when it is opened.
COMPACT_AFTER: Final = 1024


class Journal:
    """One slot's journal, locked by this process from :meth:`open` until :meth:`close`.

    Its methods block (file I/O and fsync): the reserve calls them on a thread of its own.
    """

    def __init__(
        self,
        path: Path,
        slot: int,
        fd: int,
        location: str,
        *,
        data_id: str = "",
        witness_dir: Path | None = None,
    ) -> None:
        self.path = path
        self.slot = slot
        self.location = location
        #: The data dir's identity, the owner of every reserve journaled here.
        self.data_id = data_id
        #: This opening of the journal: its marks in the ledger are told apart by it.
        self.session = secrets.token_hex(8)
        self.witness = Witness.of(path, witness_dir)
        #: Why the journal was not trusted at open (None: it was, or held nothing to trust).
        self.distrusted: str | None = None
        #: Reserves still to serve from or to report, in the order they were granted.
        self.reserves: list[JournalReserve] = []
        #: IDs of reserves retired at open because the journal was damaged.
        self.abandoned_ids = 0
        self.records = 0
        self._fd: int | None = fd

    @classmethod
    def open(
        cls,
        data_dir: Path,
        *,
        slots: int,
        location: str,
        owner: str,
        witness_dir: Path | None = None,
    ) -> Journal:
        """Lock the first free slot of ``data_dir`` and replay its journal.

        Args:
            location: where the ledger lives; reserves another ledger granted are dropped.
            owner: who this process is, written in the journal for the operator.
            witness_dir: where the journals' witnesses are kept (None: ``/dev/shm``).

        Raises:
            JournalLocked: every slot is locked by another process.
            OSError: the data dir or the witness directory cannot be written.
        """
        data_dir.mkdir(parents=True, exist_ok=True)
        data_id = data_dir_id(data_dir)
        for slot in range(slots):
            path = data_dir / JOURNAL_NAME.format(slot)
            fd = lock(path)
            if fd is None:
                continue
            journal = cls(path, slot, fd, location, data_id=data_id, witness_dir=witness_dir)
            try:
                journal._load(owner)
            except BaseException:
                journal.close()
                raise
            return journal
        holders = "; ".join(
            f"{JOURNAL_NAME.format(slot)}: {owner_of(data_dir / JOURNAL_NAME.format(slot))}"
            for slot in range(min(slots, 4))
        )
        raise JournalLocked(
            f"every one of the {slots} emergency-reserve journals in {data_dir} is locked by "
            f"another running process ({holders}{'; ...' if slots > 4 else ''}): each process "
            "serving from a reserve needs a journal of its own; stop the other process, give "
            "this one its own KEYGEN_DATA_DIR, or raise KEYGEN_RESERVE_SLOTS"
        )

    def _load(self, owner: str) -> None:
        with open(self.path, "rb") as existing:
            data = existing.read()
        result = replay(data)
        keep: list[JournalReserve] = []
        rewrite = result.damage is not None or result.records > COMPACT_AFTER
        for reserve in result.reserves.values():
            if reserve.synced:
                rewrite = True
                continue
            if reserve.owner is not None and reserve.owner != self.data_id:
                log.warning(
                    "reserve journal %s: reserve %d..%d of %r was granted to another data dir "
                    "(%s, this one is %s): a journal copied from another instance; dropped, "
                    "never served from",
                    self.path,
                    reserve.start,
                    reserve.end,
                    reserve.namespace,
                    reserve.owner,
                    self.data_id,
                )
                rewrite = True
                continue
            if reserve.ledger != self.location:
                log.warning(
                    "reserve journal %s: reserve %d..%d of %r was granted by the ledger at %s, "
                    "not this one (%s): dropped, never served from",
                    self.path,
                    reserve.start,
                    reserve.end,
                    reserve.namespace,
                    reserve.ledger,
                    self.location,
                )
                rewrite = True
                continue
            keep.append(reserve)
        if result.damage is not None:
            self._abandon(keep, result.damage, data)
        elif any(reserve.retired is None for reserve in keep):
            self.distrusted = self.witness.check(data)
            if self.distrusted is not None:
                self._distrust(keep, self.distrusted)
                rewrite = True
        self.reserves = keep
        opened = {
            "type": "open",
            "version": JOURNAL_VERSION,
            "owner": owner,
            "pid": os.getpid(),
            "at": time.time(),
        }
        if rewrite:
            self._rewrite([opened, *(r for reserve in keep for r in reserve.records())])
        else:
            self.records = result.records
            self.witness.reset(data)
            self.append([opened])
        fsync_dir(self.path.parent)  # the file's name is durable before it is relied on

    def _distrust(self, reserves: list[JournalReserve], why: str) -> None:
        """Abandon the open reserves of a well-formed journal that may not be the latest:
        it may lack marks of IDs already handed out (the argument: ``docs/reserve.md``)."""
        described = []
        for reserve in reserves:
            if reserve.retired is None:
                reserve.retired = f"journal not verified: {why}"
                self.abandoned_ids += reserve.end - reserve.mark
                described.append(f"{reserve.namespace!r} {reserve.start}..{reserve.end}")
        log.warning(
            "reserve journal %s is not verified (%s): it may lack marks of IDs already handed "
            "out, so its reserves are abandoned, never served from again (their IDs are "
            "wasted): %s; fresh reserves are taken as soon as the ledger answers",
            self.path,
            why,
            ", ".join(described),
        )

    def _abandon(self, reserves: list[JournalReserve], damage: str, data: bytes) -> None:
        copy = self.path.with_name(f"{self.path.name}.damaged-{time.time_ns()}")
        copy.write_bytes(data)
        described = []
        for reserve in reserves:
            if reserve.retired is None:
                reserve.retired = f"journal damaged: {damage}"
                self.abandoned_ids += reserve.end - reserve.mark
                described.append(f"{reserve.namespace!r} {reserve.start}..{reserve.end}")
        log.error(
            "reserve journal %s is damaged (%s): its reserves are abandoned, never served from "
            "again (their IDs are wasted): %s; the damaged file is kept as %s",
            self.path,
            damage,
            ", ".join(described) or "none open",
            copy,
        )

    def append(self, records: Sequence[Record], *, sync: bool = True) -> None:
        """Append ``records`` and, with ``sync``, wait until they are on disk."""
        fd = self._require_fd()
        data = b"".join(encode(record) for record in records)
        write_all(fd, data)
        if sync:
            os.fdatasync(fd)
        # Before anything the records cover is handed out: a journal cut back below them
        # is then told from one the process left behind.
        self.witness.extend(data)
        self.records += len(records)

    def _rewrite(self, records: Iterable[Record]) -> None:
        """Replace the journal by ``records``, atomically, keeping the slot locked throughout.

        The new file is locked before it is renamed over the old one: a process that opened
        the old file and locks it once we let go sees that it no longer is the journal.
        """
        old = self._require_fd()
        records = list(records)
        temporary = self.path.with_name(f"{self.path.name}.tmp")
        fd = os.open(
            temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o644
        )
        data = b"".join(encode(record) for record in records)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            write_all(fd, data)
            os.fsync(fd)
            os.replace(temporary, self.path)
        except BaseException:
            os.close(fd)
            raise
        fsync_dir(self.path.parent)
        self.witness.reset(data)
        self._fd = fd
        os.close(old)
        self.records = len(records)

    def _require_fd(self) -> int:
        if self._fd is None:
            raise OSError(f"reserve journal {self.path} is closed")
        return self._fd

    def close(self) -> None:
        """Release the slot."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
