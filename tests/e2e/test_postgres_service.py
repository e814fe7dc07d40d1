"""The service wired to PostgreSQL: which layer serves, start-up with the database away,
a misconfigured URL, and ``keygen ledger status`` against PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from pydantic import ValidationError

from keygen.api import create_app
from keygen.checker import Record, check
from keygen.cluster.postgres import PostgresNode, with_database
from keygen.config import Settings
from keygen.errors import LedgerUnavailable
from tests.support.app import running


def pg_settings(tmp_path: Path, url: str, **overrides: Any) -> Settings:
    options: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "instance_id": "test",
        "database_url": url,
        "ALLOCATION_TIMEOUT": 1.0,
        "breaker_reset_timeout": 0.2,
        "db_connect_timeout": 0.5,
        "db_command_timeout": 0.5,
        **overrides,
    }
    return Settings(_env_file=None, **options)


async def allocate(http: httpx.AsyncClient, size: int) -> httpx.Response:
    return await http.post("/allocate", json={"size": size})


@pytest.mark.anyio
async def test_with_a_database_url_requests_are_served_from_postgresql(
    postgres_url: str, tmp_path: Path
) -> None:
    """KEYGEN_DATABASE_URL makes PostgreSQL the ledger and serves each request from it
    directly: source "postgresql", one direct grant per batch, health reports the pool."""
    async with running(create_app(pg_settings(tmp_path, postgres_url))) as http:
        responses = await asyncio.gather(*(allocate(http, 10) for _ in range(50)))
        health = (await http.get("/health")).json()
    bodies = [r.json() for r in responses]
    assert {r.status_code for r in responses} == {200}
    assert {b["source"] for b in bodies} == {"postgresql"}
    verdict = check(Record.from_json({**b, "requested": 10}) for b in bodies)
    assert verdict.ok, verdict.summary()
    assert health["postgresql_health"] == "healthy" and health["ledger"] == "postgresql"
    assert health["postgresql"]["connected"] and health["postgresql"]["schema_version"] >= 1
    conn = await asyncpg.connect(postgres_url)
    try:
        kinds = await conn.fetch(
            "SELECT kind, sum(end_id - start_id + 1) AS ids FROM keygen_grants GROUP BY kind"
        )
    finally:
        await conn.close()
    assert [(row["kind"], row["ids"]) for row in kinds] == [("direct", 500)]


@pytest.mark.anyio
async def test_lease_mode_serves_postgresql_leases_from_memory(
    postgres_url: str, tmp_path: Path
) -> None:
    """KEYGEN_POSTGRESQL_MODE=lease serves from in-process segments of the PostgreSQL ledger:
    many requests, one lease grant."""
    settings = pg_settings(tmp_path, postgres_url, postgresql_mode="lease", lease_size=10_000)
    async with running(create_app(settings)) as http:
        responses = [await allocate(http, 10) for _ in range(20)]
    assert {r.json()["source"] for r in responses} == {"postgresql"}
    assert [r.json()["start"] for r in responses] == list(range(1, 200, 10))
    conn = await asyncpg.connect(postgres_url)
    try:
        grants = await conn.fetch("SELECT kind, start_id, end_id FROM keygen_grants")
    finally:
        await conn.close()
    assert [tuple(row) for row in grants] == [("lease", 1, 10_000)]


@pytest.mark.anyio
async def test_the_service_starts_without_postgresql_and_serves_once_it_is_back(
    controlled_postgres: PostgresNode, postgres_url: str, tmp_path: Path
) -> None:
    """Started while PostgreSQL is down, the service answers 503 with Retry-After (and an
    unhealthy /health) instead of failing to start, then serves as soon as it is back, and
    /health says so within a probe."""
    await asyncio.to_thread(controlled_postgres.stop)
    try:
        # Keys off: with KEYGEN_AUTH=auto an instance that has not read the key table refuses
        # with keys_unavailable first (tests/e2e/test_data_directory.py); this is the ledger's.
        settings = pg_settings(tmp_path, postgres_url, auth="off")
        async with running(create_app(settings)) as http:
            refused = await allocate(http, 5)
            down = await http.get("/health")
            await asyncio.to_thread(controlled_postgres.start)
            async with asyncio.timeout(10):
                while (served := await allocate(http, 5)).status_code != 200:
                    await asyncio.sleep(0.1)
            # /health follows at the next background probe.
            async with asyncio.timeout(5):
                while (up := await http.get("/health")).status_code != 200:
                    await asyncio.sleep(0.1)
    finally:
        await asyncio.to_thread(controlled_postgres.ensure_running)
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "service_unavailable"
    assert down.status_code == 503 and down.json()["postgresql_health"] == "unhealthy"
    assert served.json()["source"] == "postgresql" and served.json()["start"] == 1
    assert up.status_code == 200 and up.json()["postgresql_health"] == "healthy"


@pytest.mark.anyio
async def test_a_misconfigured_database_url_stops_start_up(
    postgres_url: str, tmp_path: Path
) -> None:
    """A database that does not exist fails start-up with the reason, not later requests."""
    url = with_database(postgres_url, "no_such_database")
    with pytest.raises(LedgerUnavailable, match="does not exist"):
        async with running(create_app(pg_settings(tmp_path, url))):
            pass


def test_pool_bounds_are_validated() -> None:
    """A pool minimum above its maximum is refused when the settings are read."""
    with pytest.raises(ValidationError, match="KEYGEN_DB_POOL_MIN_SIZE"):
        Settings(_env_file=None, db_pool_min_size=5, db_pool_max_size=2)


def keygen(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keygen", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def test_ledger_status_reads_postgresql_without_changing_it(postgres_url: str) -> None:
    """`keygen ledger status` reads the PostgreSQL ledger when KEYGEN_DATABASE_URL is set,
    and on a database never migrated reports nothing rather than creating tables."""
    env = {"KEYGEN_DATABASE_URL": postgres_url}
    empty = keygen("ledger", "status", "--json", env=env)
    assert empty.returncode == 0, empty.stderr
    assert json.loads(empty.stdout) == []

    async def grant() -> None:
        from keygen.ledgers.postgres import PostgresLedger

        ledger = await PostgresLedger.open(postgres_url)
        try:
            await ledger.grant("orders", 42, kind="direct", holder="test")
        finally:
            await ledger.aclose()

    asyncio.run(grant())
    status = keygen("ledger", "status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) == [
        {"namespace": "orders", "next_id": 43, "headroom": 2**63 - 1 - 42, "grants": 1}
    ]
    table = keygen("ledger", "status", env=env)
    assert "postgresql" in table.stdout and "orders" in table.stdout


def test_ledger_status_reports_an_unreachable_database_cleanly() -> None:
    """Against a server that is not there, ledger status exits 1 with the reason and hides
    the password."""
    env = {
        "KEYGEN_DATABASE_URL": "postgresql://u:s3cret@127.0.0.1:9/keygen",
        "KEYGEN_DB_CONNECT_TIMEOUT": "1",
    }
    result = keygen("ledger", "status", env=env)
    assert result.returncode == 1
    assert "cannot reach the server" in result.stderr
    assert "Traceback" not in result.stderr and "s3cret" not in result.stderr
