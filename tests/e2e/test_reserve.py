"""The emergency reserve against real processes: ``keygen serve`` with its Redis Sentinel and
PostgreSQL layers down, killed with ``kill -9``, restarted, its journal truncated, its reserve
used up, started with nothing to serve from. Every test ends with the overlap checker over
every range it received, from every layer.

"Redis down" is either a real Sentinel topology killed mid-load, or Sentinel addresses on
which nothing listens (a cluster that is down): both refuse connections the same way.
"""

from __future__ import annotations

import asyncio
import fcntl
import math
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from keygen.checker import Record, check
from keygen.cluster.postgres import PostgresNode
from keygen.cluster.topology import LocalCluster
from keygen.constants import SOURCE_POSTGRESQL, SOURCE_REDIS, SOURCE_RESERVE
from keygen.dispensers.journal import JOURNAL_NAME
from keygen.dispensers.journal_records import replay
from keygen.errors import ClusterError
from tests.support.load import LoadResult, run_load, wait_for_acks, wait_until
from tests.support.processes import ServeProcess, free_port

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

BUDGET = 3.0  # ALLOCATION_TIMEOUT of the servers under test
SLACK = 2.0  # what a loaded 2-core machine may add around it
NAMESPACES = ("default", "orders")


def service_env(tmp_path: Path, postgres_url: str, sentinels: str, **extra: str) -> dict[str, str]:
    return {
        "KEYGEN_DATABASE_URL": postgres_url,
        "REDIS_SENTINEL_HOSTS": sentinels,
        "KEYGEN_DATA_DIR": str(tmp_path / "data"),
        "KEYGEN_INSTANCE_ID": "r0",
        "KEYGEN_RESERVE_SIZE": "1000000",
        "KEYGEN_RESERVE_NAMESPACES": ",".join(NAMESPACES),
        "ALLOCATION_TIMEOUT": str(BUDGET),
        "KEYGEN_REDIS_TIMEOUT": "0.5",
        "KEYGEN_REDIS_SOCKET_TIMEOUT": "0.25",
        "KEYGEN_DB_CONNECT_TIMEOUT": "0.5",
        "KEYGEN_DB_COMMAND_TIMEOUT": "0.5",
        "KEYGEN_BREAKER_RESET_TIMEOUT": "0.5",
        "KEYGEN_HEALTH_TIMEOUT": "0.5",
        # No keys: a start with the ledger down would otherwise refuse every request until
        # it has read the key table (fail closed), and the reserve is what is tested here.
        "KEYGEN_AUTH": "off",
        **extra,
    }


def dead_sentinels() -> str:
    """Sentinel addresses on which nothing listens: a Redis topology that is down."""
    return ",".join(f"127.0.0.1:{free_port()}" for _ in range(3))


@asynccontextmanager
async def serving(env: dict[str, str], log: Path, **options: Any) -> AsyncIterator[ServeProcess]:
    server = ServeProcess(env, log=log, **options)
    try:
        await asyncio.to_thread(server.start)
        yield server
    finally:
        server.kill(signal.SIGKILL)  # also when it never became ready


@asynccontextmanager
async def loading(
    url: str, result: LoadResult, sizes: tuple[int, int] = (1, 100), **options: Any
) -> AsyncIterator[LoadResult]:
    """Load on ``url`` until the block ends; ``result`` fills in as it runs."""
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_load(
            url,
            clients=6,
            duration=math.inf,
            namespaces=NAMESPACES,
            sizes=sizes,
            stop=stop,
            result=result,
            timeout=BUDGET + 10,
            refusal_pause=0.05,
            **options,
        )
    )
    try:
        yield result
    finally:
        stop.set()
        await task


async def health(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.get(f"{url}/health")


async def health_until(
    url: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20
) -> dict[str, Any]:
    """Poll /health until ``predicate`` holds for its document; return the document. Past
    ``timeout``, fail with the last document seen."""
    deadline = time.monotonic() + timeout
    seen: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        try:
            async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                seen = (await health(url)).json()
        except TimeoutError:
            break
        assert seen is not None
        if predicate(seen):
            return seen
        await asyncio.sleep(0.1)
    raise AssertionError(f"/health did not get there within {timeout:g} s; last seen: {seen}")


def reserves_held(document: dict[str, Any]) -> bool:
    namespaces = document.get("reserve", {}).get("namespaces", {})
    return all(namespaces.get(ns, {}).get("remaining", 0) > 0 for ns in NAMESPACES)


async def acks_from(result: LoadResult, source: str, count: int, timeout: float = 20) -> None:
    """Wait until ``count`` more ranges from ``source`` have been acknowledged."""
    seen = sum(r.source == source for r in result.acknowledged)
    await wait_until(
        lambda: sum(r.source == source for r in result.acknowledged) >= seen + count, timeout
    )


def assert_disjoint(*records: Record) -> None:
    verdict = check(list(records))
    assert verdict.ok, verdict.summary()


async def reserve_usage(postgres_url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(postgres_url)
    try:
        return await conn.fetch("SELECT * FROM keygen_reserve_usage ORDER BY namespace, start_id")
    finally:
        await conn.close()


async def test_redis_and_postgresql_down_the_reserve_serves_then_is_refilled(
    cluster: LocalCluster, controlled_postgres: PostgresNode, postgres_url: str, tmp_path: Path
) -> None:
    """With the Sentinel topology killed and PostgreSQL stopped under load, every request is
    still served, from the reserve, while /health says degraded with the reserve left and
    its minutes; when PostgreSQL returns, it serves again, the reserve's usage is in the
    audit trail and a fresh reserve is held."""
    env = service_env(tmp_path, postgres_url, cluster.env()["REDIS_SENTINEL_HOSTS"])
    result = LoadResult()
    async with serving(env, tmp_path / "serve.log") as server, loading(server.url, result):
        await health_until(server.url, reserves_held)
        await acks_from(result, SOURCE_REDIS, 200)
        await asyncio.to_thread(cluster.kill_all)
        await asyncio.to_thread(controlled_postgres.stop)
        await acks_from(result, SOURCE_RESERVE, 300)
        degraded = await health(server.url)
        served_from_reserve = [r for r in result.acknowledged if r.source == SOURCE_RESERVE]
        await asyncio.to_thread(controlled_postgres.start)
        await acks_from(result, SOURCE_POSTGRESQL, 100)
        refilled = await health_until(
            server.url,
            lambda d: (
                d["reserve"]["usages_recorded"] >= 2
                and reserves_held(d)
                and d["status"] == "degraded"
            ),  # Redis is still down
        )
    assert set(result.statuses) == {200} and not result.errors, (result.statuses, result.errors)
    assert_disjoint(*result.acknowledged)
    assert degraded.status_code == 200
    document = degraded.json()
    assert document["status"] == "degraded" and document["reserve"]["serving"] is True
    assert document["redis_health"] == "unhealthy" and document["postgresql_health"] == "unhealthy"
    for namespace in NAMESPACES:
        entry = document["reserve"]["namespaces"][namespace]
        assert 0 < entry["remaining"] < 1_000_000 and entry["minutes_left"] > 0
    usage = {row["namespace"]: row for row in await reserve_usage(postgres_url)}
    for namespace in NAMESPACES:
        served = [r for r in served_from_reserve if r.namespace == namespace]
        row = usage[namespace]
        assert row["start_id"] <= min(r.start for r in served)
        assert max(r.end for r in served) <= row["used_end_id"] < row["end_id"]
        # A fresh reserve above the used one (it may have served already: it is taken as
        # soon as the ledger answers, maybe before the PostgreSQL layer's breaker closes).
        fresh = refilled["reserve"]["namespaces"][namespace]
        assert fresh["start"] > row["end_id"]
    assert refilled["reserve"]["ids_wasted"] > 0
    assert refilled["metrics"]["reserve_ids_wasted"] == refilled["reserve"]["ids_wasted"]


async def test_kill_9_while_serving_from_the_reserve_resumes_above_the_journal_mark(
    controlled_postgres: PostgresNode, postgres_url: str, tmp_path: Path
) -> None:
    """``kill -9`` mid-load while serving from the reserve, restart with Redis and
    PostgreSQL still down: the new process serves from the same reserve, starting above the
    journal's mark, which covers everything acknowledged before the kill."""
    env = service_env(tmp_path, postgres_url, dead_sentinels())
    before, after = LoadResult(), LoadResult()
    async with serving(env, tmp_path / "serve.log") as server:
        await health_until(server.url, reserves_held)
        await asyncio.to_thread(controlled_postgres.stop)
        async with loading(server.url, before):
            await acks_from(before, SOURCE_RESERVE, 400)
            server.kill(signal.SIGKILL)  # requests in flight
        journal = replay((tmp_path / "data" / JOURNAL_NAME.format(0)).read_bytes())
        await asyncio.to_thread(server.start)
        async with loading(server.url, after, seed=1):
            await wait_for_acks(after, 300, timeout=20)
    assert journal.damage is None
    assert_disjoint(*before.acknowledged, *after.acknowledged)
    assert {r.source for r in after.acknowledged} == {SOURCE_RESERVE}
    assert set(after.statuses) == {200}
    for namespace in NAMESPACES:
        (mark,) = [r.mark for r in journal.reserves.values() if r.namespace == namespace]
        assert max(r.end for r in before.acknowledged if r.namespace == namespace) <= mark
        assert min(r.start for r in after.acknowledged if r.namespace == namespace) == mark + 1


async def test_a_used_up_reserve_gives_clean_503s_until_postgresql_returns(
    controlled_postgres: PostgresNode, postgres_url: str, tmp_path: Path
) -> None:
    """Once the reserve is used up, every request gets a prompt JSON 503 reserve_exhausted
    with Retry-After and /health says unhealthy; PostgreSQL back, the service serves and
    holds a fresh reserve."""
    env = service_env(tmp_path, postgres_url, dead_sentinels(), KEYGEN_RESERVE_SIZE="20000")
    result = LoadResult()
    async with serving(env, tmp_path / "serve.log") as server:
        await health_until(server.url, reserves_held)
        await asyncio.to_thread(controlled_postgres.stop)
        async with loading(server.url, result, sizes=(100, 100), timed=True):
            await wait_until(lambda: result.statuses[503] >= 50, timeout=30)
            down = await health(server.url)
            restarted_at = time.monotonic()
            await asyncio.to_thread(controlled_postgres.start)
            await acks_from(result, SOURCE_POSTGRESQL, 50)
        # Both used-up reserves' usage recorded in the ledger, and fresh ones held.
        # PostgreSQL's restart, its breaker closed by a probe, both usages recorded and fresh
        # reserves granted: seconds here, more on a loaded machine. (On a loaded machine the
        # fresh reserves may be used up too before the probe closes the breaker: their usages
        # are recorded as well, so at least two.)
        up = await health_until(
            server.url,
            lambda h: reserves_held(h) and h["reserve"]["usages_recorded"] >= 2,
            timeout=60,
        )
    refusals = [o for o in result.outcomes if o.status != 200]
    assert {o.status for o in refusals} == {503} and not result.errors
    assert {o.code for o in refusals} == {"reserve_exhausted"}
    assert all(int(o.retry_after or 0) >= 1 for o in refusals)
    assert max(o.seconds for o in result.outcomes) < BUDGET + SLACK
    assert down.status_code == 503 and down.json()["status"] == "unhealthy"
    assert all(e["remaining"] == 0 for e in down.json()["reserve"]["namespaces"].values())
    # Every ID of both reserves, none twice (checked below). Counted up to PostgreSQL's
    # restart: from then on the service takes fresh reserves, and serves from them while the
    # PostgreSQL layer's breaker is still open.
    answered = [o for o in result.outcomes if o.status == 200]
    served = sum(
        r.size
        for o, r in zip(answered, result.acknowledged, strict=True)
        if r.source == SOURCE_RESERVE and o.finished_at < restarted_at
    )
    assert served == 2 * 20_000
    assert up["status"] == "degraded" and up["reserve"]["usages_recorded"] >= 2
    assert_disjoint(*result.acknowledged)


async def test_a_truncated_journal_abandons_its_reserve_which_is_never_served_again(
    controlled_postgres: PostgresNode, postgres_url: str, tmp_path: Path
) -> None:
    """A journal cut short after a crash is not trusted: the restarted process serves
    nothing from it (clean 503s, a clear log line), reports the abandoned reserve once
    PostgreSQL returns, and takes a fresh reserve above it."""
    env = service_env(tmp_path, postgres_url, dead_sentinels())
    log = tmp_path / "serve.log"
    before, after = LoadResult(), LoadResult()
    async with serving(env, log) as server:
        await health_until(server.url, reserves_held)
        await asyncio.to_thread(controlled_postgres.stop)
        async with loading(server.url, before):
            await acks_from(before, SOURCE_RESERVE, 200)
        server.kill(signal.SIGKILL)
        path = tmp_path / "data" / JOURNAL_NAME.format(0)
        path.write_bytes(path.read_bytes()[:-10])
        await asyncio.to_thread(server.start)
        refused = await asyncio.to_thread(
            httpx.post, f"{server.url}/allocate", json={"size": 5}, timeout=10
        )
        down = await health(server.url)
        await asyncio.to_thread(controlled_postgres.start)
        async with loading(server.url, after, seed=1):
            await acks_from(after, SOURCE_POSTGRESQL, 100)
            refilled = await health_until(
                server.url, lambda d: d["reserve"]["usages_recorded"] == 2 and reserves_held(d)
            )
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "reserve_unavailable"
    assert down.status_code == 503 and down.json()["reserve"]["ids_wasted"] > 0
    assert "is damaged" in log.read_text() and "never served from again" in log.read_text()
    rows = await reserve_usage(postgres_url)
    assert len(rows) == 2 and all(r["note"].startswith("journal damaged") for r in rows)
    for row in rows:
        fresh = refilled["reserve"]["namespaces"][row["namespace"]]
        assert fresh["start"] > row["end_id"]
    assert_disjoint(*before.acknowledged, *after.acknowledged)


async def test_everything_down_at_start_up_gives_clear_503s_until_postgresql_returns(
    controlled_postgres: PostgresNode, postgres_url: str, tmp_path: Path
) -> None:
    """Started with Redis and PostgreSQL down and no journal, the service answers 503
    reserve_unavailable with Retry-After, keeps trying, and serves (and takes its reserve)
    as soon as PostgreSQL is back."""
    controlled_postgres.stop()
    env = service_env(tmp_path, postgres_url, dead_sentinels())
    result = LoadResult()
    async with serving(env, tmp_path / "serve.log") as server:
        async with loading(server.url, result, timed=True):
            await wait_until(lambda: result.statuses[503] >= 30, timeout=20)
            down = await health(server.url)
            await asyncio.sleep(1.0)  # a few keeper rounds fail meanwhile
            await asyncio.to_thread(controlled_postgres.start)
            started_at = time.monotonic()
            await acks_from(result, SOURCE_POSTGRESQL, 100)
            recovered_in = time.monotonic() - started_at
        up = await health_until(server.url, reserves_held)
    refusals = [o for o in result.outcomes if o.status != 200]
    assert {(o.status, o.code) for o in refusals} == {(503, "reserve_unavailable")}
    assert all(int(o.retry_after or 0) >= 1 for o in refusals) and not result.errors
    assert max(o.seconds for o in result.outcomes) < BUDGET + SLACK
    assert down.status_code == 503 and down.json()["status"] == "unhealthy"
    assert down.json()["reserve"]["last_error"]  # the keeper keeps trying
    assert recovered_in < 10 and up["reserve"]["reserves_taken"] == 2
    assert_disjoint(*result.acknowledged)


async def test_workers_each_lock_a_journal_and_a_process_with_no_free_slot_refuses(
    controlled_postgres: PostgresNode, postgres_url: str, tmp_path: Path
) -> None:
    """``--workers 2`` on one data dir: each worker locks its own journal and serves from
    its own reserve; another process that finds no free slot refuses to start and says why."""
    env = service_env(tmp_path, postgres_url, dead_sentinels(), KEYGEN_RESERVE_SLOTS="2")
    result = LoadResult()
    data = tmp_path / "data"
    async with serving(env, tmp_path / "serve.log", workers=2) as server:
        await wait_until(
            lambda: all((data / JOURNAL_NAME.format(i)).exists() for i in (0, 1)), timeout=20
        )
        for slot in (0, 1):
            fd = os.open(data / JOURNAL_NAME.format(slot), os.O_RDWR)
            try:
                with pytest.raises(BlockingIOError):
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(fd)
        second = ServeProcess(env, log=tmp_path / "second.log")
        try:
            with pytest.raises(ClusterError, match="exited while starting"):
                await asyncio.to_thread(second.start)
        finally:
            second.kill(signal.SIGKILL)  # had it started after all
        await wait_until(
            lambda: all(
                len(replay((data / JOURNAL_NAME.format(i)).read_bytes()).reserves) == 2
                for i in (0, 1)
            ),
            timeout=20,
        )
        await asyncio.to_thread(controlled_postgres.stop)
        async with loading(server.url, result):
            await acks_from(result, SOURCE_RESERVE, 400)
    refusal = (tmp_path / "second.log").read_text()
    assert "locked by another running process" in refusal and "KEYGEN_RESERVE_SLOTS" in refusal
    reserve_starts = {
        (r.namespace, r.start)
        for i in (0, 1)
        for r in replay((data / JOURNAL_NAME.format(i)).read_bytes()).reserves.values()
    }
    assert len(reserve_starts) == 4  # two namespaces x two workers, each its own reserve
    assert set(result.statuses) == {200}
    assert_disjoint(*result.acknowledged)
