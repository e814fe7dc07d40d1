"""The PostgreSQL ledger's schema, as numbered migrations applied at start-up.

Each migration runs once, in order; ``keygen_schema_version`` records which ran. All pending
migrations run in one transaction that first takes a transaction-scoped advisory lock, so
several instances starting at once apply each migration exactly once: the others wait for
the lock, then find nothing left to do. PostgreSQL's DDL is transactional, so a migration
that fails leaves no trace and is retried at the next start.

Migrations are append-only: never edit one that has shipped; add the next number.

Expand, then contract: during a rolling upgrade two consecutive releases run on one schema,
so a release's migration only adds (tables, nullable or defaulted columns, indexes), and
what the previous release needed is dropped or tightened one release later.
tests/e2e/test_upgrade.py fails when the newest migration does otherwise (docs/upgrade.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from keygen.errors import SchemaTooNew

__all__ = [
    "LATEST_VERSION",
    "MIGRATIONS",
    "MIGRATION_LOCK_KEY",
    "Connection",
    "Migration",
    "migrate",
]

#: A connection of our own or one borrowed from a pool.
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"

#: The advisory lock serialising migrations ("keygen" in ASCII, as a bigint).
MIGRATION_LOCK_KEY = int.from_bytes(b"keygen", "big")

VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS keygen_schema_version (
    version     integer PRIMARY KEY,
    description text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "counters and the audit trail of grants",
        """
        CREATE TABLE keygen_counters (
            namespace  text PRIMARY KEY,
            -- Highest ID ever granted (0 = none), so last_id + n never passes 2**63 - 1.
            last_id    bigint NOT NULL DEFAULT 0 CHECK (last_id >= 0),
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE keygen_grants (
            id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            namespace  text NOT NULL,
            start_id   bigint NOT NULL,
            end_id     bigint NOT NULL,
            kind       text NOT NULL CHECK (kind IN ('lease', 'direct', 'reserve')),
            holder     text NOT NULL,
            granted_at timestamptz NOT NULL DEFAULT now(),
            CHECK (1 <= start_id AND start_id <= end_id)
        );
        CREATE INDEX keygen_grants_by_namespace ON keygen_grants (namespace, end_id);
        """,
    ),
    Migration(
        2,
        "the audit trail of emergency reserves: what each instance used of its reserve",
        """
        CREATE TABLE keygen_reserve_usage (
            namespace   text NOT NULL,
            start_id    bigint NOT NULL,
            end_id      bigint NOT NULL,
            -- Highest ID of the reserve possibly handed out; start_id - 1 when none was.
            used_end_id bigint NOT NULL,
            holder      text NOT NULL,
            note        text NOT NULL DEFAULT '',
            recorded_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (namespace, start_id),
            CHECK (1 <= start_id AND start_id <= end_id),
            CHECK (start_id - 1 <= used_end_id AND used_end_id <= end_id)
        );
        """,
    ),
    Migration(
        3,
        "API keys: each kept as a keyed hash of its token, with its scopes",
        """
        CREATE TABLE keygen_api_keys (
            id         text PRIMARY KEY,
            name       text NOT NULL,
            -- HMAC-SHA256 of the token under the server secret (keygen/auth.py); never the token.
            digest     text NOT NULL UNIQUE,
            scopes     text NOT NULL,  -- space-separated
            secret_id  text NOT NULL,  -- fingerprint of the server secret that made the digest
            created_at timestamptz NOT NULL DEFAULT now(),
            revoked_at timestamptz
        );
        """,
    ),
    Migration(
        4,
        "rate limits of API keys, the keys each grant was made for, usage per key and day",
        """
        ALTER TABLE keygen_api_keys
            ADD COLUMN requests_per_second bigint,
            ADD COLUMN ids_per_second bigint,
            ADD COLUMN ids_per_day bigint;
        ALTER TABLE keygen_grants ADD COLUMN requested_by text NOT NULL DEFAULT '';
        CREATE TABLE keygen_key_usage (
            key_id   text NOT NULL,
            day      date NOT NULL,  -- UTC
            requests bigint NOT NULL,
            ids      numeric NOT NULL,
            PRIMARY KEY (key_id, day)
        );
        """,
    ),
    Migration(
        5,
        "the marks of emergency reserves, per opening of a journal: a replayed journal shows",
        """
        CREATE TABLE keygen_reserve_marks (
            namespace   text NOT NULL,
            start_id    bigint NOT NULL,
            end_id      bigint NOT NULL,
            session     text NOT NULL,  -- one opening of a reserve journal
            owner       text NOT NULL,  -- the data dir's identity
            holder      text NOT NULL,
            first_id    bigint NOT NULL,  -- the first ID the session may serve
            -- Highest ID the session may have handed out; first_id - 1 when none.
            mark        bigint NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (namespace, start_id, session)
        );
        """,
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version


async def migrate(conn: Connection, timeout: float | None = None) -> int:
    """Apply every pending migration on ``conn``; return the schema version now in place.

    Raises:
        SchemaTooNew: the database is ahead of this code.
    """
    async with conn.transaction():
        await conn.execute("SET LOCAL synchronous_commit = on", timeout=timeout)
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY, timeout=timeout)
        # Only when missing: CREATE ... IF NOT EXISTS still needs the CREATE privilege, and a
        # least-privileged role must be able to start once the schema is in place.
        if await conn.fetchval("SELECT to_regclass('keygen_schema_version')") is None:
            await conn.execute(VERSION_TABLE, timeout=timeout)
        current: int = await conn.fetchval(
            "SELECT coalesce(max(version), 0) FROM keygen_schema_version", timeout=timeout
        )
        if current > LATEST_VERSION:
            raise SchemaTooNew(current, LATEST_VERSION)
        for migration in MIGRATIONS:
            if migration.version <= current:
                continue
            await conn.execute(migration.sql, timeout=timeout)
            await conn.execute(
                "INSERT INTO keygen_schema_version (version, description) VALUES ($1, $2)",
                migration.version,
                migration.description,
                timeout=timeout,
            )
    return max(current, LATEST_VERSION)
