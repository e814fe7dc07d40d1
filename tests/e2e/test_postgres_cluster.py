"""Several ``keygen serve`` processes on one PostgreSQL ledger, started and loaded at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import httpx
import pytest

from keygen.checker import check
from keygen.ledgers.postgres_migrations import MIGRATIONS
from tests.support.load import run_load
from tests.support.processes import ServeProcess

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

INSTANCES = 3
NAMESPACES = ("default", "orders")


async def test_three_instances_on_one_database_never_overlap(
    postgres_url: str, tmp_path: Path
) -> None:
    """Three instances started together on an empty database (so migrating concurrently)
    and loaded concurrently hand out only disjoint ranges, every one from PostgreSQL."""
    servers = [
        ServeProcess(
            {
                "KEYGEN_DATABASE_URL": postgres_url,
                "KEYGEN_DATA_DIR": str(tmp_path / f"data-{i}"),
                "KEYGEN_INSTANCE_ID": f"node-{i}",
            },
            log=tmp_path / f"serve-{i}.log",
        )
        for i in range(INSTANCES)
    ]
    try:
        await asyncio.gather(*(asyncio.to_thread(server.start) for server in servers))
        results = await asyncio.gather(
            *(
                run_load(server.url, clients=12, duration=3.0, namespaces=NAMESPACES, seed=i)
                for i, server in enumerate(servers)
            )
        )
        async with httpx.AsyncClient() as http:
            health = [(await http.get(f"{s.url}/health")).json() for s in servers]
    finally:
        for server in servers:
            server.stop()

    acknowledged = [record for result in results for record in result.acknowledged]
    for result in results:
        assert set(result.statuses) == {200} and not result.errors, result
        assert len(result.acknowledged) > 100  # each instance really served under load
    assert {record.source for record in acknowledged} == {"postgresql"}
    verdict = check(acknowledged)
    assert verdict.ok, verdict.summary()
    assert {h["postgresql_health"] for h in health} == {"healthy"}

    conn = await asyncpg.connect(postgres_url)
    try:
        holders = await conn.fetch("SELECT DISTINCT holder, kind FROM keygen_grants")
        grants = await conn.fetchval("SELECT count(*) FROM keygen_grants")
        versions = await conn.fetchval("SELECT count(*) FROM keygen_schema_version")
    finally:
        await conn.close()
    assert {(row["holder"], row["kind"]) for row in holders} == {
        (f"node-{i}", "direct") for i in range(INSTANCES)
    }
    assert grants < len(acknowledged)  # concurrent requests shared grants
    assert versions == len(MIGRATIONS)  # the three concurrent start-ups migrated once
