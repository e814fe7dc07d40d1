"""The embedded ledger: one SQLite file, safe across ``kill -9`` and across processes.

The file is in WAL mode with ``synchronous=FULL``, so a commit is on disk (the WAL is
fsynced) before a grant is returned. Each grant is one ``BEGIN IMMEDIATE`` transaction: it
takes the database's write lock before reading the counter, so two processes sharing the
file (``keygen serve --workers 2``) serialise their grants and never read the same counter.
sqlite3 blocks, so all work runs on one dedicated thread per ledger.

The ledger has an identity (a random ID in ``ledger_identity``), and the data dir remembers
it beside the file (``ledger.id``): a start that finds ``ledger.id`` but no ledger file, or
a ledger file of another identity, refuses (``ledger_identity.py``) rather than restart every
counter at 1.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from keygen.constants import GRANT_RESERVE, MAX_ID, SOURCE_SQLITE
from keygen.errors import LedgerUnavailable, NamespaceExhausted, TooManyNamespaces
from keygen.ledgers.base import (
    ApiKeyRecord,
    Grant,
    KeyUsage,
    NamespaceStatus,
    ReserveMark,
    ReserveUsage,
    like_prefix,
)
from keygen.ledgers.ledger_identity import check_identity, missing_ledger
from keygen.ledgers.retention import AuditRetention
from keygen.ranges import IdRange
from keygen.rates import Rates
from keygen.requester import REQUESTED_BY

T = TypeVar("T")

LEDGER_FILENAME = "ledger.sqlite3"

#: How long a grant waits for another process's write lock before the ledger counts as down.
BUSY_TIMEOUT_MS = 5000

SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (
    namespace  TEXT PRIMARY KEY,
    last_id    INTEGER NOT NULL CHECK (last_id >= 0),  -- highest ID ever granted; 0 = none
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS grants (
    id         INTEGER PRIMARY KEY,
    namespace  TEXT NOT NULL,
    start_id   INTEGER NOT NULL,
    end_id     INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    holder     TEXT NOT NULL,
    granted_at REAL NOT NULL,
    requested_by TEXT NOT NULL DEFAULT ''  -- the API key(s) it was made for (keygen/requester.py)
);
CREATE INDEX IF NOT EXISTS grants_by_namespace ON grants (namespace, end_id);
CREATE TABLE IF NOT EXISTS reserve_usage (
    namespace   TEXT NOT NULL,
    start_id    INTEGER NOT NULL,
    end_id      INTEGER NOT NULL,
    used_end_id INTEGER NOT NULL,  -- highest ID possibly handed out; start_id - 1 = none
    holder      TEXT NOT NULL,
    note        TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    PRIMARY KEY (namespace, start_id)
);
CREATE TABLE IF NOT EXISTS reserve_marks (
    namespace   TEXT NOT NULL,
    start_id    INTEGER NOT NULL,
    end_id      INTEGER NOT NULL,
    session     TEXT NOT NULL,  -- one opening of a reserve journal
    owner       TEXT NOT NULL,  -- the data dir's identity
    holder      TEXT NOT NULL,
    first_id    INTEGER NOT NULL,  -- the first ID the session may serve
    mark        INTEGER NOT NULL,  -- highest ID it may have handed out; first_id - 1 = none
    recorded_at REAL NOT NULL,
    PRIMARY KEY (namespace, start_id, session)
);
CREATE TABLE IF NOT EXISTS ledger_identity (
    id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    digest     TEXT NOT NULL UNIQUE,  -- HMAC-SHA256 of the token (keygen/auth.py); never the token
    scopes     TEXT NOT NULL,         -- space-separated
    secret_id  TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL,
    requests_per_second INTEGER,  -- rate limits (keygen/quotas.py); NULL: none
    ids_per_second      INTEGER,
    ids_per_day         INTEGER
);
CREATE TABLE IF NOT EXISTS key_usage (
    key_id   TEXT NOT NULL,
    day      TEXT NOT NULL,  -- YYYY-MM-DD, UTC
    requests INTEGER NOT NULL,
    ids      INTEGER NOT NULL,
    PRIMARY KEY (key_id, day)
);
"""

#: Columns added after a table first shipped: added to a ledger file made before them.
ADDED_COLUMNS = {
    "grants": {"requested_by": "TEXT NOT NULL DEFAULT ''"},
    "api_keys": {
        "requests_per_second": "INTEGER",
        "ids_per_second": "INTEGER",
        "ids_per_day": "INTEGER",
    },
}


def _add_missing_columns(db: sqlite3.Connection) -> None:
    for table, columns in ADDED_COLUMNS.items():
        present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for column, declaration in columns.items():
            if column not in present:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


class SqliteLedger:
    """A ledger in a SQLite file; see the module docstring for why it cannot repeat an ID."""

    name = SOURCE_SQLITE

    def __init__(self, path: Path, *, max_namespaces: int | None = None) -> None:
        self.path = path
        #: Namespaces a grant may create at most (None: no bound).
        self.max_namespaces = max_namespaces
        self.retention: AuditRetention | None = None
        #: The ledger's identity, as ``ledger.id`` beside it remembers it.
        self.identity = ""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keygen-sqlite")
        self._db: sqlite3.Connection | None = None
        self._closed = False

    @classmethod
    async def open(
        cls,
        data_dir: Path,
        *,
        max_namespaces: int | None = None,
        audit_retention_days: int = 0,
    ) -> SqliteLedger:
        """Open (creating if needed) the ledger file in ``data_dir``.

        Args:
            max_namespaces: a grant that would create one more namespace is refused.
            audit_retention_days: prune older grant rows in the background (0: keep all).
        """
        ledger = cls(data_dir / LEDGER_FILENAME, max_namespaces=max_namespaces)
        await ledger._run(ledger._connect)
        if audit_retention_days > 0:
            ledger.retention = AuditRetention(
                ledger.prune_batch, days=audit_retention_days, name=ledger.name
            )
            ledger.retention.start()
        return ledger

    def _connect(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LedgerUnavailable(
                f"the embedded ledger cannot be kept in {self.path.parent} (KEYGEN_DATA_DIR): "
                f"{exc.strerror or exc}"
            ) from exc
        missing_ledger(self.path)  # before sqlite3 would make an empty one
        db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
            _add_missing_columns(db)
            self.identity = check_identity(db, self.path)
        except BaseException:
            db.close()
            raise
        self._db = db

    async def _run(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        if self._closed:
            raise LedgerUnavailable(f"SQLite ledger {self.path} is closed")
        try:
            return await loop.run_in_executor(self._executor, fn)
        except sqlite3.Error as exc:
            raise LedgerUnavailable(f"SQLite ledger {self.path}: {exc}") from exc

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise LedgerUnavailable(f"SQLite ledger {self.path} is closed")
        return self._db

    async def grant(self, namespace: str, count: int, *, kind: str, holder: str) -> IdRange:
        if count < 1:
            raise ValueError("count must be at least 1")
        requested_by = REQUESTED_BY.get()  # here: the executor's thread has another context
        return await self._run(lambda: self._grant(namespace, count, kind, holder, requested_by))

    def _grant(
        self, namespace: str, count: int, kind: str, holder: str, requested_by: str
    ) -> IdRange:
        def work(db: sqlite3.Connection) -> IdRange:
            row = db.execute(
                "SELECT last_id FROM counters WHERE namespace = ?", (namespace,)
            ).fetchone()
            if row is None and self.max_namespaces is not None:
                # Under the write lock: concurrent creations are counted one at a time.
                (namespaces,) = db.execute("SELECT count(*) FROM counters").fetchone()
                if namespaces >= self.max_namespaces:
                    raise TooManyNamespaces(namespace, self.max_namespaces)
            last = 0 if row is None else int(row[0])
            if count > MAX_ID - last:
                raise NamespaceExhausted(namespace, count, MAX_ID - last)
            now = time.time()
            self._store_last_id(db, namespace, last + count, now)
            db.execute(
                "INSERT INTO grants"
                " (namespace, start_id, end_id, kind, holder, granted_at, requested_by)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (namespace, last + 1, last + count, kind, holder, now, requested_by),
            )
            return IdRange(namespace, last + 1, last + count)

        return self._write(work)

    async def advance_to(self, namespace: str, last_id: int) -> int:
        if not 0 <= last_id <= MAX_ID:
            raise ValueError(f"last_id must be within 0..{MAX_ID}")

        def work(db: sqlite3.Connection) -> int:
            current = self._last_id(db, namespace)
            if last_id <= current:
                return current
            self._store_last_id(db, namespace, last_id, time.time())
            return last_id

        return await self._run(lambda: self._write(work))

    async def record_reserve_usage(self, usage: ReserveUsage) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            now = time.time()
            if self._last_id(db, usage.namespace) < usage.end:
                self._store_last_id(db, usage.namespace, usage.end, now)
            db.execute(
                "INSERT INTO reserve_usage (namespace, start_id, end_id, used_end_id, holder,"
                " note, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (namespace, start_id) DO NOTHING",
                (
                    usage.namespace,
                    usage.start,
                    usage.end,
                    usage.used_end,
                    usage.holder,
                    usage.note,
                    now,
                ),
            )
            row = db.execute(
                "SELECT 1 FROM grants WHERE namespace = ? AND start_id = ? AND end_id = ?"
                " AND kind = ?",
                (usage.namespace, usage.start, usage.end, GRANT_RESERVE),
            ).fetchone()
            return row is not None

        return await self._run(lambda: self._write(work))

    async def record_reserve_mark(self, mark: ReserveMark) -> int:
        def work(db: sqlite3.Connection) -> int:
            now = time.time()
            if self._last_id(db, mark.namespace) < mark.end:
                self._store_last_id(db, mark.namespace, mark.end, now)
            db.execute(
                "INSERT INTO reserve_marks (namespace, start_id, end_id, session, owner, holder,"
                " first_id, mark, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (namespace, start_id, session) DO UPDATE SET"
                " mark = max(mark, excluded.mark), recorded_at = excluded.recorded_at",
                (
                    mark.namespace,
                    mark.start,
                    mark.end,
                    mark.session,
                    mark.owner,
                    mark.holder,
                    mark.first,
                    mark.mark,
                    now,
                ),
            )
            (highest,) = db.execute(
                "SELECT max(mark) FROM reserve_marks"
                " WHERE namespace = ? AND start_id = ? AND session <> ?",
                (mark.namespace, mark.start, mark.session),
            ).fetchone()
            return mark.start - 1 if highest is None else int(highest)

        return await self._run(lambda: self._write(work))

    async def reserve_marks(self) -> list[ReserveMark]:
        rows = await self._run(
            lambda: self._conn.execute(
                "SELECT namespace, start_id, end_id, session, owner, holder, first_id, mark"
                " FROM reserve_marks ORDER BY namespace, start_id, first_id"
            ).fetchall()
        )
        return [ReserveMark(*row) for row in rows]

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in a transaction that holds the write lock from its first read."""
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            result = work(db)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return result

    @staticmethod
    def _last_id(db: sqlite3.Connection, namespace: str) -> int:
        query = "SELECT last_id FROM counters WHERE namespace = ?"
        row = db.execute(query, (namespace,)).fetchone()
        return 0 if row is None else int(row[0])

    @staticmethod
    def _store_last_id(db: sqlite3.Connection, namespace: str, last_id: int, now: float) -> None:
        db.execute(
            "INSERT INTO counters (namespace, last_id, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (namespace) DO UPDATE SET last_id = excluded.last_id,"
            " updated_at = excluded.updated_at",
            (namespace, last_id, now),
        )

    async def status(self) -> list[NamespaceStatus]:
        rows = await self._run(
            lambda: self._conn.execute(
                "SELECT c.namespace, c.last_id,"
                " (SELECT count(*) FROM grants g WHERE g.namespace = c.namespace)"
                " FROM counters c ORDER BY c.namespace"
            ).fetchall()
        )
        return [NamespaceStatus(ns, int(last), int(grants)) for ns, last, grants in rows]

    async def grants(
        self, *, after: int = 0, holder_prefix: str | None = None, limit: int = 10_000
    ) -> list[Grant]:
        pattern = like_prefix(holder_prefix)
        rows = await self._run(
            lambda: self._conn.execute(
                "SELECT id, namespace, start_id, end_id, kind, holder, requested_by FROM grants"
                " WHERE id > ? AND holder LIKE ? ESCAPE '\\' ORDER BY id LIMIT ?",
                (after, pattern, limit),
            ).fetchall()
        )
        return [Grant(*row) for row in rows]

    async def overlapping(self, namespace: str, start: int, end: int) -> list[Grant]:
        rows = await self._run(
            lambda: self._conn.execute(
                "SELECT id, namespace, start_id, end_id, kind, holder, requested_by FROM grants"
                " WHERE namespace = ? AND end_id >= ? AND start_id <= ? ORDER BY id",
                (namespace, start, end),
            ).fetchall()
        )
        return [Grant(*row) for row in rows]

    async def prune_batch(self, before: float, after: int, batch: int) -> tuple[int, int | None]:
        """Delete the prunable grant rows among the next ``batch`` rows after id ``after``
        that were granted before ``before`` (``retention.py`` says which are kept)."""
        return await self._run(lambda: self._prune_batch(before, after, batch))

    def _prune_batch(self, before: float, after: int, batch: int) -> tuple[int, int | None]:
        rows = self._conn.execute(
            "SELECT id, granted_at FROM grants WHERE id > ? ORDER BY id LIMIT ?", (after, batch)
        ).fetchall()
        old = [row_id for row_id, granted_at in rows if granted_at < before]
        if not old:
            return 0, None
        upto = old[-1]

        def work(db: sqlite3.Connection) -> int:
            return db.execute(
                "DELETE FROM grants WHERE id > ? AND id <= ? AND granted_at < ? AND kind <> ?"
                " AND end_id < (SELECT max(h.end_id) FROM grants h"
                " WHERE h.namespace = grants.namespace)",
                (after, upto, before, GRANT_RESERVE),
            ).rowcount

        deleted = self._write(work)
        done = len(old) < len(rows) or len(rows) < batch  # ids follow time: the rest is younger
        return deleted, None if done else upto

    async def add_api_key(self, key: ApiKeyRecord) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO api_keys (id, name, digest, scopes, secret_id, created_at,"
                " requests_per_second, ids_per_second, ids_per_day)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.id,
                    key.name,
                    key.digest,
                    " ".join(key.scopes),
                    key.secret_id,
                    key.created_at,
                    key.rates.requests_per_second,
                    key.rates.ids_per_second,
                    key.rates.ids_per_day,
                ),
            )

        await self._run(lambda: self._write(work))

    async def api_keys(self) -> list[ApiKeyRecord]:
        rows = await self._run(
            lambda: self._conn.execute(
                "SELECT id, name, digest, scopes, secret_id, created_at, revoked_at,"
                " requests_per_second, ids_per_second, ids_per_day"
                " FROM api_keys ORDER BY created_at, id"
            ).fetchall()
        )
        return [
            ApiKeyRecord(
                key_id,
                name,
                digest,
                tuple(scopes.split()),
                secret_id,
                created,
                revoked,
                Rates(*limits),
            )
            for key_id, name, digest, scopes, secret_id, created, revoked, *limits in rows
        ]

    async def add_key_usage(self, day: str, usage: dict[str, tuple[int, int]]) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO key_usage (key_id, day, requests, ids) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (key_id, day) DO UPDATE SET"
                " requests = requests + excluded.requests, ids = ids + excluded.ids",
                [(key_id, day, requests, ids) for key_id, (requests, ids) in usage.items()],
            )

        await self._run(lambda: self._write(work))

    async def key_usage(self, since_day: str) -> list[KeyUsage]:
        rows = await self._run(
            lambda: self._conn.execute(
                "SELECT key_id, day, requests, ids FROM key_usage WHERE day >= ?"
                " ORDER BY day, key_id",
                (since_day,),
            ).fetchall()
        )
        return [KeyUsage(*row) for row in rows]

    async def revoke_api_key(self, key_id: str) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            return (
                db.execute(
                    "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                    (time.time(), key_id),
                ).rowcount
                == 1
            )

        return await self._run(lambda: self._write(work))

    async def ping(self) -> None:
        await self._run(lambda: self._conn.execute("SELECT 1").fetchone())

    async def aclose(self) -> None:
        if self._closed:
            return
        if self.retention is not None:
            await self.retention.aclose()
        self._closed = True
        db, self._db = self._db, None
        if db is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, db.close)
        self._executor.shutdown(wait=False)
