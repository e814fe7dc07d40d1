"""The embedded ledger's identity, remembered beside it, so that its loss is noticed.

A SQLite ledger deleted, or replaced by another file, would otherwise be made afresh at the
next start: every counter back at 1, every ID issued before issued again (and, with the keys
gone, ``KEYGEN_AUTH=auto`` open to all). So the ledger holds a random identity (table
``ledger_identity``), and the data dir holds a copy of it (``ledger.id``, written when the
ledger is first opened). At every open:

- ``ledger.id`` present, the ledger file missing (or empty): refused, the ledger is lost;
- both present, different identities: refused, the file is another ledger;
- the ledger without an identity (made before identities, or restored from such a backup):
  it takes the data dir's, or a fresh one.

The refusal names the way out: ``keygen restore`` of a backup (which raises every counter above
what the data dir shows was issued), or a data dir of its own for a ledger really new.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
from pathlib import Path
from typing import Final

from keygen.errors import LedgerUnavailable

__all__ = ["IDENTITY_FILENAME", "check_identity", "missing_ledger"]

IDENTITY_FILENAME: Final = "ledger.id"


def _remembered(ledger: Path) -> str | None:
    path = ledger.with_name(IDENTITY_FILENAME)
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LedgerUnavailable(
            f"cannot read {path} (KEYGEN_DATA_DIR): {exc.strerror or exc}"
        ) from exc


def missing_ledger(ledger: Path) -> None:
    """Refuse when the data dir remembers a ledger that is no longer there.

    Raises:
        LedgerUnavailable: ``ledger.id`` names a ledger, and ``ledger`` is missing or empty.
    """
    remembered = _remembered(ledger)
    if remembered is None:
        return
    try:
        present = ledger.stat().st_size > 0
    except FileNotFoundError:
        present = False
    if not present:
        raise LedgerUnavailable(
            f"the embedded ledger {ledger} is missing, but this data dir (KEYGEN_DATA_DIR) was "
            f"used with ledger {remembered} ({IDENTITY_FILENAME}): a new one would restart "
            "every counter at 1 and issue IDs again. Restore it (keygen restore DIR), or "
            f"give a new ledger a data dir of its own"
        )


def check_identity(db: sqlite3.Connection, ledger: Path) -> str:
    """The ledger's identity, checked against (or written to) the data dir's ``ledger.id``.

    Raises:
        LedgerUnavailable: the ledger is another than the one the data dir was used with.
    """
    remembered = _remembered(ledger)
    db.execute("BEGIN IMMEDIATE")  # workers opening at once agree on one identity
    try:
        row = db.execute("SELECT id FROM ledger_identity LIMIT 1").fetchone()
        if row is None:
            identity = remembered or secrets.token_hex(16)
            db.execute("INSERT INTO ledger_identity (id) VALUES (?)", (identity,))
        else:
            identity = str(row[0])
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    if remembered is None:
        _remember(ledger.with_name(IDENTITY_FILENAME), identity)
    elif remembered != identity:
        raise LedgerUnavailable(
            f"the embedded ledger {ledger} is ledger {identity}, but this data dir "
            f"(KEYGEN_DATA_DIR) was used with ledger {remembered} ({IDENTITY_FILENAME}): "
            "another ledger's counters may issue IDs this one issued. Restore this data dir's "
            "ledger (keygen restore DIR raises every counter above the evidence)"
        )
    return identity


def _remember(path: Path, identity: str) -> None:
    temporary = path.with_name(f".{IDENTITY_FILENAME}.{os.getpid()}")
    try:
        temporary.write_text(identity + "\n")
        fd = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise LedgerUnavailable(
            f"cannot write {path} (KEYGEN_DATA_DIR): {exc.strerror or exc}"
        ) from exc
