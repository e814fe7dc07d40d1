"""PostgreSQL stopped under load: clean, prompt 503s; back again: the service recovers alone."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import httpx
import pytest

from keygen.checker import check
from keygen.cluster.postgres import PostgresNode
from tests.support.load import LoadResult, run_load, wait_for_acks, wait_until
from tests.support.processes import ServeProcess

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

BUDGET = 1.0  # ALLOCATION_TIMEOUT of the server under test
SLACK = 1.5  # what a loaded 2-core machine may add around it (HTTP, scheduling)
CLIENTS = 8


@pytest.mark.parametrize("failure", ["stopped", "frozen"])
async def test_an_outage_gives_prompt_503s_and_the_service_recovers_alone(
    failure: str, controlled_postgres: PostgresNode, postgres_url: str, tmp_path: Path
) -> None:
    """With PostgreSQL stopped (connections refused) or frozen (SIGSTOP: nothing answers)
    mid-load, every request ends within the time budget as a 200 or a JSON 503 with
    Retry-After (never a 500 or a hang), /health says unhealthy, and once PostgreSQL is back
    the same process serves again with no ID repeated."""
    fail, recover = {
        "stopped": (lambda: controlled_postgres.stop(), controlled_postgres.start),
        "frozen": (controlled_postgres.pause, controlled_postgres.resume),
    }[failure]
    server = ServeProcess(
        {
            "KEYGEN_DATABASE_URL": postgres_url,
            "KEYGEN_DATA_DIR": str(tmp_path / "data"),
            "ALLOCATION_TIMEOUT": str(BUDGET),
            "KEYGEN_DB_CONNECT_TIMEOUT": "0.5",
            "KEYGEN_DB_COMMAND_TIMEOUT": "0.5",
            "KEYGEN_BREAKER_RESET_TIMEOUT": "0.5",
        },
        log=tmp_path / "serve.log",
    ).start()
    stop, load = asyncio.Event(), LoadResult()
    loader = asyncio.create_task(
        run_load(
            server.url,
            clients=CLIENTS,
            duration=math.inf,
            sizes=(10, 10),
            stop=stop,
            result=load,
            timeout=BUDGET + 10,
            timed=True,
            refusal_pause=0.05,
        )
    )
    try:
        await wait_for_acks(load, 200, timeout=20)
        # In threads, so that the load keeps running meanwhile.
        await asyncio.to_thread(fail)
        stopped_at = time.monotonic()
        await asyncio.sleep(2.0)
        async with httpx.AsyncClient(timeout=5) as http:
            down = await http.get(f"{server.url}/health")
        restarting_at = time.monotonic()  # it may serve before recover() returns
        await asyncio.to_thread(recover)
        restarted_at = time.monotonic()
        await wait_until(
            lambda: any(o.status == 200 and o.finished_at > restarted_at for o in load.outcomes),
            timeout=15,
        )
        recovered_in = time.monotonic() - restarted_at
        await asyncio.sleep(0.5)
        stop.set()
        await loader
        async with httpx.AsyncClient(timeout=5) as http:
            up = await http.get(f"{server.url}/health")
    finally:
        stop.set()
        server.stop()

    assert not load.errors, load.errors
    assert {o.status for o in load.outcomes} == {200, 503}
    unavailable = [o for o in load.outcomes if o.status == 503]
    assert all(
        o.code == "service_unavailable" and int(o.retry_after or 0) >= 1 for o in unavailable
    )
    assert max(o.seconds for o in load.outcomes) < BUDGET + SLACK
    during = [o for o in load.outcomes if stopped_at + 0.5 < o.finished_at < restarting_at]
    assert during and all(o.status == 503 for o in during)
    assert down.status_code == 503 and down.json()["postgresql_health"] == "unhealthy"
    assert down.json()["postgresql"]["last_error"]
    assert up.status_code == 200 and up.json()["postgresql_health"] == "healthy"
    assert recovered_in < 10
    verdict = check(load.acknowledged)
    assert verdict.ok, verdict.summary()
