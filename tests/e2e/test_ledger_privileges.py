"""The least-privileged role docs/ledger.md gives, built from the page's own GRANT lines, runs
the PostgreSQL ledger: every statement the service and `keygen keys` send is allowed, and
nothing else is."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from keygen.constants import GRANT_DIRECT, GRANT_LEASE, GRANT_RESERVE
from keygen.ledgers.base import ApiKeyRecord, ReserveMark, ReserveUsage
from keygen.ledgers.postgres_migrations import LATEST_VERSION
from keygen.ledgers.retention import prune
from keygen.rates import Rates
from tests.support.postgres import connection, opened
from tests.support.processes import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

LEDGER_DOC = Path(__file__).resolve().parents[2] / "docs" / "ledger.md"

#: The role and database names the page's GRANT lines use.
DOC_ROLE = "keygen_app"
DOC_DATABASE = "keygen"

GRANT_LINE = re.compile(r"^GRANT .+ TO " + DOC_ROLE + ";$", re.MULTILINE)
TABLE_GRANT = re.compile(r"^GRANT [A-Z, ]+ ON (keygen_\w+) TO ")


def documented_grants() -> list[str]:
    """The GRANT statements of docs/ledger.md, as the page shows them."""
    grants = GRANT_LINE.findall(LEDGER_DOC.read_text())
    assert grants, f"no 'GRANT ... TO {DOC_ROLE};' lines in {LEDGER_DOC}"
    return grants


@asynccontextmanager
async def documented_role(owner_url: str) -> AsyncIterator[str]:
    """A fresh login role holding exactly the page's grants on the database of ``owner_url``
    (PUBLIC's default rights to connect and to use the schema taken away, so the page's own
    lines are what lets it in); yields that role's URL."""
    database = urlsplit(owner_url).path.lstrip("/")
    role = f"{DOC_ROLE}_{free_port()}"
    statements = [
        grant.replace(f" TO {DOC_ROLE};", f" TO {role};").replace(
            f" ON DATABASE {DOC_DATABASE} ", f' ON DATABASE "{database}" '
        )
        for grant in documented_grants()
    ]
    async with connection(owner_url) as conn:
        await conn.execute(f"CREATE ROLE {role} LOGIN")
        await conn.execute(f'REVOKE CONNECT, TEMPORARY ON DATABASE "{database}" FROM PUBLIC')
        await conn.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
        for statement in statements:
            await conn.execute(statement)
    try:
        yield owner_url.replace("postgres@", f"{role}@", 1)
    finally:
        async with connection(owner_url) as conn:
            await conn.execute(f"DROP OWNED BY {role}")
            await conn.execute(f"DROP ROLE {role}")


async def test_the_documented_grants_name_every_table_of_the_schema(postgres_url: str) -> None:
    """Every keygen_* table the migrations create has its GRANT line in docs/ledger.md, and the
    page names no table that does not exist."""
    async with opened(postgres_url):
        pass
    async with connection(postgres_url) as conn:
        tables = {
            row["tablename"]
            for row in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE tablename LIKE 'keygen\\_%'"
            )
        }
    documented = {m[1] for g in documented_grants() if (m := TABLE_GRANT.match(g))}
    assert documented == tables, f"the page grants on {documented}, the schema has {tables}"


async def test_the_documented_role_runs_the_ledger(postgres_url: str) -> None:
    """As a role with only the page's grants, the migrated ledger starts, grants (new
    namespaces too, bounded or not), advances, records a reserve's usage and marks, prunes the audit
    trail, adds, reads and revokes keys, counts their usage and reports its status; DDL and
    deleting a counter are refused."""
    async with opened(postgres_url):
        pass  # the owner's first start: the migrations
    async with documented_role(postgres_url) as url:
        async with opened(url, max_namespaces=100) as ledger:
            first = await ledger.grant("default", 10, kind=GRANT_DIRECT, holder="a")
            await ledger.grant("default", 10, kind=GRANT_LEASE, holder="a")
            reserve = await ledger.grant("orders", 100, kind=GRANT_RESERVE, holder="a")
            assert await ledger.advance_to("restored", 1000) == 1000
            usage = ReserveUsage("orders", reserve.start, reserve.end, reserve.start + 9, "a")
            assert await ledger.record_reserve_usage(usage)
            for mark in (reserve.start + 4, reserve.start + 9):  # recorded, then raised
                opening = ReserveMark(
                    "orders", reserve.start, reserve.end, "s1", "dir", "a", reserve.start, mark
                )
                assert await ledger.record_reserve_mark(opening) == reserve.start - 1
            assert [m.mark for m in await ledger.reserve_marks()] == [reserve.start + 9]
            statuses = {s.namespace: s.last_id for s in await ledger.status()}
            assert statuses == {"default": 20, "orders": 100, "restored": 1000}
            assert len(await ledger.overlapping("default", 1, 20)) == 2
            # Granted "before" an hour from now: the first default grant is the only prunable
            # row (each namespace keeps its latest, and reserve grants are kept).
            assert await prune(ledger.prune_batch, time.time() + 3600) == 1
            assert [g.start for g in await ledger.grants()] == [11, reserve.start]
            await ledger.add_api_key(
                ApiKeyRecord("k1", "ci", "d1", ("allocate",), "s1", time.time(), rates=Rates(5))
            )
            await ledger.add_key_usage("2026-12-08", {"k1": (2, 20)})
            await ledger.add_key_usage("2026-12-08", {"k1": (1, 10)})
            usage_rows = await ledger.key_usage("2026-12-01")
            assert [(u.requests, u.ids) for u in usage_rows] == [(3, 30)]
            assert await ledger.revoke_api_key("k1")
            keys = await ledger.api_keys()
            assert [(k.id, k.revoked_at is not None) for k in keys] == [("k1", True)]
            assert await ledger.current_schema_version() == LATEST_VERSION
        async with opened(url) as unbounded:
            assert (await unbounded.grant("fresh", 5, kind=GRANT_DIRECT, holder="b")).start == 1
        assert first.start == 1
        async with connection(url) as conn:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("CREATE TABLE probe (x int)")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("DELETE FROM keygen_counters")
