"""PostgreSQL crashing under load: nothing acknowledged before the crash is issued again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from keygen.checker import check
from keygen.cluster.postgres import PostgresNode
from tests.support.load import LoadResult, run_load, wait_for_acks
from tests.support.processes import ServeProcess

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

NAMESPACES = ("default", "orders")


@pytest.mark.parametrize("crash", ["sigkill", "immediate"])
async def test_a_crash_under_load_reissues_nothing(
    crash: str, controlled_postgres: PostgresNode, postgres_url: str, tmp_path: Path
) -> None:
    """Two instances under load, PostgreSQL killed (SIGKILL of all its processes, or
    ``pg_ctl stop -m immediate``) and restarted: every range acknowledged before or after
    is disjoint, and the recovered counters are above every acknowledged ID."""
    servers = [
        ServeProcess(
            {
                "KEYGEN_DATABASE_URL": postgres_url,
                "KEYGEN_DATA_DIR": str(tmp_path / f"data-{i}"),
                "KEYGEN_INSTANCE_ID": f"node-{i}",
                "ALLOCATION_TIMEOUT": "2",
                "KEYGEN_DB_CONNECT_TIMEOUT": "1",
                "KEYGEN_DB_COMMAND_TIMEOUT": "1",
                "KEYGEN_BREAKER_RESET_TIMEOUT": "0.5",
            },
            log=tmp_path / f"serve-{i}.log",
        )
        for i in range(2)
    ]
    result, stop = LoadResult(), asyncio.Event()
    try:
        await asyncio.gather(*(asyncio.to_thread(server.start) for server in servers))
        loads = [
            asyncio.create_task(
                run_load(
                    server.url,
                    clients=10,
                    duration=60,
                    namespaces=NAMESPACES,
                    seed=i,
                    stop=stop,
                    result=result,
                )
            )
            for i, server in enumerate(servers)
        ]
        await wait_for_acks(result, 400, timeout=30)
        # In threads, so that the load keeps running against the dead server meanwhile.
        if crash == "sigkill":
            await asyncio.to_thread(controlled_postgres.kill)
        else:
            await asyncio.to_thread(controlled_postgres.stop, mode="immediate")
        await asyncio.sleep(0.5)
        refused = result.statuses[503]
        await asyncio.to_thread(controlled_postgres.start)
        await wait_for_acks(result, len(result.acknowledged) + 400, timeout=30)
        stop.set()
        await asyncio.gather(*loads)
    finally:
        stop.set()
        for server in servers:
            server.stop()

    assert set(result.statuses) <= {200, 503} and not result.errors, result.statuses
    assert refused > 0  # the load did reach the dead server
    verdict = check(result.acknowledged)
    assert verdict.ok, verdict.summary()
    conn = await asyncpg.connect(postgres_url)
    try:
        rows = await conn.fetch("SELECT namespace, last_id FROM keygen_counters")
        counters: dict[str, int] = {row["namespace"]: row["last_id"] for row in rows}
    finally:
        await conn.close()
    for namespace in NAMESPACES:
        highest = max(r.end for r in result.acknowledged if r.namespace == namespace)
        assert counters[namespace] >= highest  # the crash lost no acknowledged grant
