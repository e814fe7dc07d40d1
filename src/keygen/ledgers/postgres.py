"""The production ledger: one counter row per namespace in PostgreSQL.

A grant is a single statement, hence one round trip and one (implicit) transaction:
``UPDATE keygen_counters SET last_id = last_id + n ... RETURNING last_id``, the audit row
inserted from what the UPDATE returned, and ``set_config('synchronous_commit', 'on', true)``
(the function form of ``SET LOCAL``) so that the commit is flushed to disk before the
range is returned, whatever the server's or role's default. The UPDATE locks the row, so
concurrent grants from any number of instances serialise on it, each adding to the value the
previous one committed: no span is granted twice. ``docs/ledger.md`` has the full argument.

The ledger can start while PostgreSQL is unreachable: it connects (and migrates) on first
use and again after every failure, so the service recovers by itself when the server
returns. A misconfiguration (bad URL, credentials, missing database, schema newer than this
code) fails start-up instead, since waiting would not fix it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import asyncpg

from keygen.config import (
    DEFAULT_DB_COMMAND_TIMEOUT,
    DEFAULT_DB_CONNECT_TIMEOUT,
    DEFAULT_DB_POOL_MAX_SIZE,
    DEFAULT_DB_POOL_MIN_SIZE,
)
from keygen.constants import GRANT_RESERVE, MAX_ID, SOURCE_POSTGRESQL
from keygen.errors import (
    LedgerUnavailable,
    NamespaceExhausted,
    SchemaTooNew,
    ServiceError,
    TooManyNamespaces,
)
from keygen.ledgers.base import (
    ApiKeyRecord,
    Grant,
    KeyUsage,
    NamespaceStatus,
    ReserveMark,
    ReserveUsage,
    like_prefix,
)
from keygen.ledgers.postgres_migrations import MIGRATION_LOCK_KEY, Connection, migrate
from keygen.ledgers.retention import AuditRetention
from keygen.ranges import IdRange
from keygen.rates import Rates
from keygen.redact import redact_url
from keygen.requester import REQUESTED_BY
from keygen.snapshots import PostgresSnapshot

log = logging.getLogger(__name__)

#: How long ``aclose`` waits for borrowed connections before terminating them.
CLOSE_TIMEOUT = 5.0

# $1 namespace, $2 count, $3 kind, $4 holder. Returns no row when the namespace does not
# exist yet or has fewer than $2 IDs left. The UPDATE's WHERE reads set_config's result, so
# no row can be updated (nor audit row inserted) before synchronous_commit is on for this
# transaction; set_config's effect lasts until the implicit transaction ends, after commit.
GRANT_SQL = f"""
WITH durable AS MATERIALIZED (
    SELECT set_config('synchronous_commit', 'on', true) AS synchronous_commit
), granted AS (
    UPDATE keygen_counters
    SET last_id = last_id + $2, updated_at = now()
    WHERE namespace = $1
      AND last_id <= {MAX_ID} - $2
      AND (SELECT synchronous_commit FROM durable) = 'on'
    RETURNING last_id
), audit AS (
    INSERT INTO keygen_grants (namespace, start_id, end_id, kind, holder, requested_by)
    SELECT $1, last_id - $2 + 1, last_id, $3, $4, $5 FROM granted
)
SELECT last_id FROM granted
"""

CREATE_NAMESPACE_SQL = """
INSERT INTO keygen_counters (namespace) VALUES ($1) ON CONFLICT (namespace) DO NOTHING
"""

#: The advisory lock serialising namespace creations when their number is bounded, so that
#: instances creating namespaces at once cannot together pass the bound.
NAMESPACE_LOCK_KEY = MIGRATION_LOCK_KEY + 1

# $1 namespace, $2 the most namespaces there may be. Run under NAMESPACE_LOCK_KEY.
CREATE_BOUNDED_NAMESPACE_SQL = """
INSERT INTO keygen_counters (namespace)
SELECT $1 WHERE (SELECT count(*) FROM keygen_counters) < $2
ON CONFLICT (namespace) DO NOTHING
"""

NAMESPACE_EXISTS_SQL = "SELECT EXISTS (SELECT 1 FROM keygen_counters WHERE namespace = $1)"

# $1 after id, $2 batch, $3 before (epoch seconds).
PRUNE_SCAN_SQL = """
SELECT id, granted_at < to_timestamp($3) AS old FROM keygen_grants
WHERE id > $1 ORDER BY id LIMIT $2
"""

# $1 after id, $2 up to id, $3 before (epoch seconds). What is kept: retention.py.
PRUNE_SQL = f"""
DELETE FROM keygen_grants g
WHERE g.id > $1 AND g.id <= $2 AND g.granted_at < to_timestamp($3)
  AND g.kind <> '{GRANT_RESERVE}'
  AND g.end_id < (SELECT max(h.end_id) FROM keygen_grants h WHERE h.namespace = g.namespace)
"""

LAST_ID_SQL = "SELECT last_id FROM keygen_counters WHERE namespace = $1"

ADVANCE_SQL = """
INSERT INTO keygen_counters AS c (namespace, last_id) VALUES ($1, $2)
ON CONFLICT (namespace) DO UPDATE
SET last_id = greatest(c.last_id, excluded.last_id), updated_at = now()
RETURNING last_id
"""

# $1 namespace, $2 start, $3 end, $4 used_end, $5 holder, $6 note.
RECORD_USAGE_SQL = """
INSERT INTO keygen_reserve_usage (namespace, start_id, end_id, used_end_id, holder, note)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (namespace, start_id) DO NOTHING
"""

# $1 namespace, $2 start, $3 end, $4 session, $5 owner, $6 holder, $7 first, $8 mark.
RECORD_MARK_SQL = """
INSERT INTO keygen_reserve_marks
    (namespace, start_id, end_id, session, owner, holder, first_id, mark)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (namespace, start_id, session) DO UPDATE
SET mark = greatest(keygen_reserve_marks.mark, excluded.mark), recorded_at = now()
"""

OTHER_MARKS_SQL = """
SELECT max(mark) FROM keygen_reserve_marks
WHERE namespace = $1 AND start_id = $2 AND session <> $3
"""

RESERVE_GRANTED_SQL = f"""
SELECT EXISTS (
    SELECT 1 FROM keygen_grants
    WHERE namespace = $1 AND start_id = $2 AND end_id = $3 AND kind = '{GRANT_RESERVE}'
)
"""

STATUS_SQL = """
SELECT c.namespace, c.last_id,
       (SELECT count(*) FROM keygen_grants g WHERE g.namespace = c.namespace) AS grants
FROM keygen_counters c
ORDER BY c.namespace
"""

#: Driver and OS errors, most specific first, and what they mean for the ledger.
_ERRORS: tuple[tuple[type[BaseException], str], ...] = (
    (SchemaTooNew, "incompatible schema"),
    (asyncpg.InvalidAuthorizationSpecificationError, "PostgreSQL refused the credentials"),
    (asyncpg.InvalidCatalogNameError, "the database does not exist"),
    (asyncpg.InsufficientPrivilegeError, "the role lacks a privilege the ledger needs"),
    (asyncpg.ReadOnlySQLTransactionError, "the server is read-only (a standby?)"),
    (asyncpg.QueryCanceledError, "the server cancelled the statement"),
    (asyncpg.CannotConnectNowError, "the server is starting up or shutting down"),
    (asyncpg.OperatorInterventionError, "the server ended the session"),
    (asyncpg.TooManyConnectionsError, "the server has no connection slot left"),
    (asyncpg.PostgresConnectionError, "the connection was lost"),
    (asyncpg.PostgresError, "PostgreSQL error"),
    (asyncpg.ClientConfigurationError, "invalid KEYGEN_DATABASE_URL"),
    (asyncpg.InterfaceError, "driver error"),
    (TimeoutError, "timed out"),
    (OSError, "cannot reach the server"),
)

#: Failures that waiting can cure: the server is down, starting, restarting or busy.
_TRANSIENT: tuple[type[BaseException], ...] = (
    asyncpg.CannotConnectNowError,
    asyncpg.OperatorInterventionError,
    asyncpg.TooManyConnectionsError,
    asyncpg.PostgresConnectionError,
    TimeoutError,
    OSError,
)

#: Failures after which the pool's other connections are probably dead too.
_CONNECTION_LOST: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InterfaceError,
    ConnectionError,
)

#: Failures of a connection that was alive when borrowed: a grant is retried once on them.
_STALE_CONNECTION: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.InterfaceError,
    ConnectionResetError,
    BrokenPipeError,
)


async def _keep_session(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """Return a connection to the pool as it is.

    asyncpg's default reset (``RESET ALL``, ``UNLISTEN *``, ...) costs a round trip per
    borrow, a third of a grant. The ledger never changes session state (its settings are
    transaction-local), and asyncpg still rolls back any transaction left open.
    """


def is_transient(exc: BaseException | None) -> bool:
    """Whether a ledger failure caused by ``exc`` may cure itself (the server is down)."""
    return isinstance(exc, _TRANSIENT) and not isinstance(exc, asyncpg.ClientConfigurationError)


class PostgresLedger:
    """A ledger in PostgreSQL; see the module docstring for why it cannot repeat an ID."""

    name = SOURCE_POSTGRESQL

    def __init__(
        self,
        url: str,
        *,
        pool_min_size: int = DEFAULT_DB_POOL_MIN_SIZE,
        pool_max_size: int = DEFAULT_DB_POOL_MAX_SIZE,
        connect_timeout: float = DEFAULT_DB_CONNECT_TIMEOUT,
        command_timeout: float = DEFAULT_DB_COMMAND_TIMEOUT,
        migrate: bool = True,
        max_namespaces: int | None = None,
        audit_retention_days: int = 0,
    ) -> None:
        if not 0 <= pool_min_size <= pool_max_size or pool_max_size < 1:
            raise ValueError("need 0 <= pool_min_size <= pool_max_size and pool_max_size >= 1")
        self.url = url
        self.pool_min_size = pool_min_size
        self.pool_max_size = pool_max_size
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.migrate = migrate
        #: Namespaces a grant may create at most (None: no bound).
        self.max_namespaces = max_namespaces
        self.retention = (
            AuditRetention(self.prune_batch, days=audit_retention_days, name=self.name)
            if audit_retention_days > 0
            else None
        )
        self.schema_version: int | None = None
        self.ping_ms: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._connecting: asyncio.Task[asyncpg.Pool[asyncpg.Record]] | None = None
        self._closed = False

    @classmethod
    async def open(cls, url: str, **options: Any) -> PostgresLedger:
        """A ledger on ``url`` (``options`` as for the constructor), connected and its schema
        brought up to date; if the server is unreachable, go on without it (it is retried on
        every use).

        Raises:
            LedgerUnavailable: the configuration is wrong (URL, credentials, database,
                privileges, a schema newer than this code); waiting would not help.
        """
        ledger = cls(url, **options)
        try:
            await ledger._ready()
        except LedgerUnavailable as exc:
            if not is_transient(exc.__cause__):
                await ledger.aclose()
                raise
            log.warning("%s; starting without it, it is retried on every request", exc)
        if ledger.retention is not None:
            ledger.retention.start()
        return ledger

    # -- connecting -----------------------------------------------------------------------

    async def _ready(self) -> asyncpg.Pool[asyncpg.Record]:
        """The pool, connecting (and migrating) first if needed.

        Concurrent callers share one attempt; a caller that gives up (is cancelled) does
        not cancel it for the others.
        """
        if self._pool is not None:
            return self._pool
        if self._closed:
            raise LedgerUnavailable("the PostgreSQL ledger is closed")
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
            self._connecting.add_done_callback(self._connect_done)
        try:
            return await asyncio.shield(self._connecting)
        except LedgerUnavailable as exc:
            raise LedgerUnavailable(exc.message) from exc.__cause__  # one exception per caller

    def _connect_done(self, task: asyncio.Task[asyncpg.Pool[asyncpg.Record]]) -> None:
        self._connecting = None
        if not task.cancelled():
            task.exception()  # retrieved: every caller may have given up waiting

    async def _connect(self) -> asyncpg.Pool[asyncpg.Record]:
        with self._translating("connect"):
            try:
                pool = await asyncpg.create_pool(
                    self.url,
                    min_size=self.pool_min_size,
                    max_size=self.pool_max_size,
                    timeout=self.connect_timeout,
                    command_timeout=self.command_timeout,
                    reset=_keep_session,
                )
            except ValueError as exc:  # a URL asyncpg cannot parse
                if isinstance(exc, asyncpg.ClientConfigurationError):
                    raise
                raise asyncpg.ClientConfigurationError(str(exc)) from exc
            try:
                if self.migrate:
                    async with pool.acquire(timeout=self.connect_timeout) as conn:
                        self.schema_version = await migrate(conn, timeout=self.command_timeout)
                if self._closed:
                    raise LedgerUnavailable("the PostgreSQL ledger is closed")
            except BaseException:
                pool.terminate()
                raise
        self._pool = pool
        log.info(
            "PostgreSQL ledger connected to %s (schema version %s)",
            redact_url(self.url),
            self.schema_version,
        )
        return pool

    @asynccontextmanager
    async def _connection(self, action: str) -> AsyncIterator[Connection]:
        """Borrow a connection; driver errors inside the block become LedgerUnavailable."""
        pool = await self._ready()
        try:
            with self._translating(action):
                async with pool.acquire(timeout=self.connect_timeout) as conn:
                    yield conn
        except LedgerUnavailable as exc:
            if isinstance(exc.__cause__, _CONNECTION_LOST):
                # After a server restart every pooled connection is dead: replace them all
                # now rather than failing one request per stale connection.
                await pool.expire_connections()
            raise

    @contextmanager
    def _translating(self, action: str) -> Iterator[None]:
        try:
            yield
        except ServiceError:
            raise  # already ours; a tool's error (SchemaTooNew) is translated below
        except Exception as exc:
            for error_type, meaning in _ERRORS:
                if isinstance(exc, error_type):
                    message = f"PostgreSQL ledger: {action}: {meaning}: {exc or type(exc).__name__}"
                    self.last_error, self.last_error_at = message, time.time()
                    raise LedgerUnavailable(message) from exc
            raise

    # -- the Ledger protocol --------------------------------------------------------------

    async def grant(self, namespace: str, count: int, *, kind: str, holder: str) -> IdRange:
        if count < 1:
            raise ValueError("count must be at least 1")
        try:
            return await self._grant(namespace, count, kind, holder, REQUESTED_BY.get())
        except LedgerUnavailable as exc:
            if not isinstance(exc.__cause__, _STALE_CONNECTION):
                raise
        # The connection died (typically a stale one after a server restart; the pool has
        # been renewed). Retrying is safe: if the first attempt did commit, its span is
        # wasted, never returned.
        return await self._grant(namespace, count, kind, holder, REQUESTED_BY.get())

    async def _grant(
        self, namespace: str, count: int, kind: str, holder: str, requested_by: str
    ) -> IdRange:
        async with self._connection("grant") as conn:
            if count > MAX_ID:
                raise await self._exhausted(conn, namespace, count)
            row = await conn.fetchrow(GRANT_SQL, namespace, count, kind, holder, requested_by)
            if row is None:  # a new namespace, or an exhausted one
                await self._create_namespace(conn, namespace)
                row = await conn.fetchrow(GRANT_SQL, namespace, count, kind, holder, requested_by)
            if row is None:
                raise await self._exhausted(conn, namespace, count)
        last_id: int = row[0]
        return IdRange(namespace, last_id - count + 1, last_id)

    async def _create_namespace(self, conn: Connection, namespace: str) -> None:
        """Create ``namespace`` unless it exists; refuse when that would pass the bound."""
        if self.max_namespaces is None:
            await conn.execute(CREATE_NAMESPACE_SQL, namespace)
            return
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", NAMESPACE_LOCK_KEY)
            await conn.execute(CREATE_BOUNDED_NAMESPACE_SQL, namespace, self.max_namespaces)
            exists: bool = await conn.fetchval(NAMESPACE_EXISTS_SQL, namespace)
        if not exists:
            raise TooManyNamespaces(namespace, self.max_namespaces)

    @staticmethod
    async def _exhausted(conn: Connection, namespace: str, count: int) -> NamespaceExhausted:
        last_id: int | None = await conn.fetchval(LAST_ID_SQL, namespace)
        return NamespaceExhausted(namespace, count, MAX_ID - (last_id or 0))

    async def advance_to(self, namespace: str, last_id: int) -> int:
        if not 0 <= last_id <= MAX_ID:
            raise ValueError(f"last_id must be within 0..{MAX_ID}")
        async with self._connection("advance") as conn, conn.transaction():
            await conn.execute("SET LOCAL synchronous_commit = on")
            current: int = await conn.fetchval(ADVANCE_SQL, namespace, last_id)
        return current

    async def record_reserve_usage(self, usage: ReserveUsage) -> bool:
        async with self._connection("record reserve usage") as conn, conn.transaction():
            await conn.execute("SET LOCAL synchronous_commit = on")
            await conn.execute(ADVANCE_SQL, usage.namespace, usage.end)
            await conn.execute(
                RECORD_USAGE_SQL,
                usage.namespace,
                usage.start,
                usage.end,
                usage.used_end,
                usage.holder,
                usage.note,
            )
            granted: bool = await conn.fetchval(
                RESERVE_GRANTED_SQL, usage.namespace, usage.start, usage.end
            )
        return granted

    async def record_reserve_mark(self, mark: ReserveMark) -> int:
        async with self._connection("record a reserve's mark") as conn, conn.transaction():
            await conn.execute("SET LOCAL synchronous_commit = on")
            await conn.execute(ADVANCE_SQL, mark.namespace, mark.end)
            await conn.execute(
                RECORD_MARK_SQL,
                mark.namespace,
                mark.start,
                mark.end,
                mark.session,
                mark.owner,
                mark.holder,
                mark.first,
                mark.mark,
            )
            highest: int | None = await conn.fetchval(
                OTHER_MARKS_SQL, mark.namespace, mark.start, mark.session
            )
        return mark.start - 1 if highest is None else highest

    async def reserve_marks(self) -> list[ReserveMark]:
        async with self._connection("reading the reserves' marks") as conn:
            rows = await conn.fetch(
                "SELECT namespace, start_id, end_id, session, owner, holder, first_id, mark"
                " FROM keygen_reserve_marks ORDER BY namespace, start_id, first_id"
            )
        return [ReserveMark(*row) for row in rows]

    async def status(self) -> list[NamespaceStatus]:
        try:
            async with self._connection("status") as conn:
                rows = await conn.fetch(STATUS_SQL)
        except LedgerUnavailable as exc:
            if isinstance(exc.__cause__, asyncpg.UndefinedTableError):
                return []  # never migrated: no namespace exists yet
            raise
        return [NamespaceStatus(r["namespace"], r["last_id"], r["grants"]) for r in rows]

    async def grants(
        self, *, after: int = 0, holder_prefix: str | None = None, limit: int = 10_000
    ) -> list[Grant]:
        async with self._connection("reading the audit trail") as conn:
            rows = await conn.fetch(
                "SELECT id, namespace, start_id, end_id, kind, holder, requested_by"
                " FROM keygen_grants"
                " WHERE id > $1 AND holder LIKE $2 ESCAPE '\\' ORDER BY id LIMIT $3",
                after,
                like_prefix(holder_prefix),
                limit,
            )
        return [Grant(*row) for row in rows]

    async def overlapping(self, namespace: str, start: int, end: int) -> list[Grant]:
        async with self._connection("reading the audit trail") as conn:
            rows = await conn.fetch(
                "SELECT id, namespace, start_id, end_id, kind, holder, requested_by"
                " FROM keygen_grants"
                " WHERE namespace = $1 AND end_id >= $2 AND start_id <= $3 ORDER BY id",
                namespace,
                start,
                end,
            )
        return [Grant(*row) for row in rows]

    async def prune_batch(self, before: float, after: int, batch: int) -> tuple[int, int | None]:
        """Delete the prunable grant rows among the next ``batch`` rows after id ``after``
        that were granted before ``before`` (``retention.py`` says which are kept)."""
        async with self._connection("pruning the audit trail") as conn:
            rows = await conn.fetch(PRUNE_SCAN_SQL, after, batch, before)
            old = [row["id"] for row in rows if row["old"]]
            if not old:
                return 0, None
            status = await conn.execute(PRUNE_SQL, after, old[-1], before)
        deleted = int(status.rpartition(" ")[2])
        done = len(old) < len(rows) or len(rows) < batch  # ids follow time: the rest is younger
        return deleted, None if done else old[-1]

    async def add_api_key(self, key: ApiKeyRecord) -> None:
        async with self._connection("adding an API key") as conn:
            await conn.execute(
                "INSERT INTO keygen_api_keys (id, name, digest, scopes, secret_id, created_at,"
                " requests_per_second, ids_per_second, ids_per_day)"
                " VALUES ($1, $2, $3, $4, $5, to_timestamp($6), $7, $8, $9)",
                key.id,
                key.name,
                key.digest,
                " ".join(key.scopes),
                key.secret_id,
                key.created_at,
                key.rates.requests_per_second,
                key.rates.ids_per_second,
                key.rates.ids_per_day,
            )

    async def api_keys(self) -> list[ApiKeyRecord]:
        async with self._connection("reading the API keys") as conn:
            rows = await conn.fetch(
                "SELECT id, name, digest, scopes, secret_id, extract(epoch FROM created_at),"
                " extract(epoch FROM revoked_at), requests_per_second, ids_per_second,"
                " ids_per_day FROM keygen_api_keys ORDER BY created_at, id"
            )
        return [
            ApiKeyRecord(
                r[0],
                r[1],
                r[2],
                tuple(r[3].split()),
                r[4],
                float(r[5]),
                None if r[6] is None else float(r[6]),
                Rates(r[7], r[8], r[9]),
            )
            for r in rows
        ]

    async def add_key_usage(self, day: str, usage: dict[str, tuple[int, int]]) -> None:
        async with self._connection("recording usage per key") as conn:
            await conn.executemany(
                "INSERT INTO keygen_key_usage (key_id, day, requests, ids)"
                " VALUES ($1, $2::text::date, $3, $4)"
                " ON CONFLICT (key_id, day) DO UPDATE SET"
                " requests = keygen_key_usage.requests + excluded.requests,"
                " ids = keygen_key_usage.ids + excluded.ids",
                [(key_id, day, requests, ids) for key_id, (requests, ids) in usage.items()],
            )

    async def key_usage(self, since_day: str) -> list[KeyUsage]:
        async with self._connection("reading usage per key") as conn:
            rows = await conn.fetch(
                "SELECT key_id, day::text, requests, ids FROM keygen_key_usage"
                " WHERE day >= $1::text::date ORDER BY day, key_id",
                since_day,
            )
        return [KeyUsage(r[0], r[1], r[2], int(r[3])) for r in rows]

    async def revoke_api_key(self, key_id: str) -> bool:
        async with self._connection("revoking an API key") as conn:
            status = await conn.execute(
                "UPDATE keygen_api_keys SET revoked_at = now()"
                " WHERE id = $1 AND revoked_at IS NULL",
                key_id,
            )
        return bool(status == "UPDATE 1")

    async def ping(self) -> None:
        started = time.perf_counter()
        async with self._connection("ping") as conn:
            await conn.fetchval("SELECT 1")
        self.ping_ms = round(1000 * (time.perf_counter() - started), 3)

    async def current_schema_version(self) -> int | None:
        """The schema version the database is at now (None before the first migration)."""
        async with self._connection("reading the schema version") as conn:
            if await conn.fetchval("SELECT to_regclass('keygen_schema_version')") is None:
                return None
            version: int | None = await conn.fetchval(
                "SELECT max(version) FROM keygen_schema_version"
            )
            return version

    def snapshot(self) -> PostgresSnapshot:
        """The ledger's connection state, for ``/health``."""
        pool = self._pool
        return PostgresSnapshot(
            url=redact_url(self.url),
            connected=pool is not None,
            pool_size=pool.get_size() if pool is not None else 0,
            pool_idle=pool.get_idle_size() if pool is not None else 0,
            pool_max_size=self.pool_max_size,
            schema_version=self.schema_version,
            ping_ms=self.ping_ms,
            last_error=self.last_error,
            last_error_at=self.last_error_at,
        )

    async def aclose(self) -> None:
        if self.retention is not None:
            await self.retention.aclose()
        self._closed = True
        connecting = self._connecting
        if connecting is not None:
            connecting.cancel()
            await asyncio.gather(connecting, return_exceptions=True)
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await pool.close()
        except TimeoutError:
            pool.terminate()
