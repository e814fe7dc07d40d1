"""PostgreSQL stopped under load: clean, prompt 503s; back again: the service recovers alone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from keygen.checker import Record, check
from tests.support.postgres import PostgresServer
from tests.support.processes import ServeProcess

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

BUDGET = 1.0  # ALLOCATION_TIMEOUT of the server under test
SLACK = 1.5  # what a loaded 2-core machine may add around it (HTTP, scheduling)
CLIENTS = 8


@dataclass
class Outcome:
    status: int
    seconds: float
    finished_at: float
    retry_after: str | None
    code: str | None


@dataclass
class Load:
    outcomes: list[Outcome] = field(default_factory=list)
    acknowledged: list[Record] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)


async def timed_load(url: str, stop: asyncio.Event, load: Load) -> None:
    """``CLIENTS`` loops POSTing /allocate until ``stop``, timing every response."""
    async def client_loop(http: httpx.AsyncClient) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                response = await http.post("/allocate", json={"size": 10})
            except httpx.HTTPError as exc:
                load.transport_errors.append(repr(exc))
                await asyncio.sleep(0.05)
                continue
            body = response.json()
            load.outcomes.append(Outcome(
                response.status_code, time.monotonic() - started, time.monotonic(),
                response.headers.get("retry-after"),
                body.get("error", {}).get("code") if response.status_code != 200 else None,
            ))
            if response.status_code == 200:
                load.acknowledged.append(Record.from_json({**body, "requested": 10}))
            else:
                await asyncio.sleep(0.05)

    async with httpx.AsyncClient(base_url=url, timeout=BUDGET + 10) as http:
        await asyncio.gather(*(client_loop(http) for _ in range(CLIENTS)))


async def wait_until(predicate: Callable[[], bool], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("failure", ["stopped", "frozen"])
async def test_an_outage_gives_prompt_503s_and_the_service_recovers_alone(
    failure: str, controlled_postgres: PostgresServer, postgres_url: str, tmp_path: Path
) -> None:
    """With PostgreSQL stopped (connections refused) or frozen (SIGSTOP: nothing answers)
    mid-load, every request ends within the time budget as a 200 or a JSON 503 with
    Retry-After (never a 500 or a hang), /health says unhealthy, and once PostgreSQL is back
    the same process serves again with no ID repeated."""
    fail, recover = {
        "stopped": (lambda: controlled_postgres.stop("fast"), controlled_postgres.start),
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
    stop, load = asyncio.Event(), Load()
    loader = asyncio.create_task(timed_load(server.url, stop, load))
    try:
        await wait_until(lambda: len(load.acknowledged) >= 200, timeout=20)
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

    assert not load.transport_errors, load.transport_errors[:5]
    assert {o.status for o in load.outcomes} == {200, 503}
    unavailable = [o for o in load.outcomes if o.status == 503]
    assert all(o.code == "service_unavailable" and int(o.retry_after or 0) >= 1
               for o in unavailable)
    assert max(o.seconds for o in load.outcomes) < BUDGET + SLACK
    during = [o for o in load.outcomes if stopped_at + 0.5 < o.finished_at < restarting_at]
    assert during and all(o.status == 503 for o in during)
    assert down.status_code == 503 and down.json()["postgresql_health"] == "unhealthy"
    assert down.json()["postgresql"]["last_error"]
    assert up.status_code == 200 and up.json()["postgresql_health"] == "healthy"
    assert recovered_in < 10
    verdict = check(load.acknowledged)
    assert verdict.ok, verdict.summary()
