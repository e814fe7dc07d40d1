"""The Redis Sentinel layer under real faults: a fresh master + 2 replicas + 3 Sentinels per
test, two ``keygen serve`` instances under concurrent load, and the overlap checker over every
range they acknowledged. The naive allocator at the end shows that the checks have teeth."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis.sentinel import Sentinel

from keygen.checker import Record, check
from keygen.cluster.topology import LocalCluster
from keygen.config import Settings
from keygen.constants import REDIS_LEASE_KEY, SOURCE_REDIS
from keygen.dispensers import redis_functions as fn
from keygen.dispensers.sentinel import sentinels_of
from tests.support.load import LoadResult, run_load, wait_for_acks
from tests.support.processes import ServeProcess

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

CLIENTS_PER_INSTANCE = 6
NAMESPACES = ("default", "orders")
#: Megabytes written while the replicas are paused, so that the master's later writes stay
#: in its own output buffer (a lagging replica's failover, as docs/correctness.md argues).
LAG_MEGABYTES = 40


def service_env(cluster: LocalCluster, postgres_url: str, **extra: str) -> dict[str, str]:
    return {
        **cluster.env(),
        "KEYGEN_DATABASE_URL": postgres_url,
        "ALLOCATION_TIMEOUT": "10",
        "KEYGEN_REDIS_TIMEOUT": "0.5",
        "KEYGEN_REDIS_SOCKET_TIMEOUT": "0.25",
        "KEYGEN_BREAKER_RESET_TIMEOUT": "0.5",
        **extra,
    }


@asynccontextmanager
async def instances(
    tmp_path: Path, env: dict[str, str], count: int = 2
) -> AsyncIterator[list[ServeProcess]]:
    servers = []
    try:
        for i in range(count):
            log = tmp_path / f"serve-{i}.log"
            own = {"KEYGEN_INSTANCE_ID": f"i{i}", "KEYGEN_DATA_DIR": str(tmp_path / f"data-{i}")}
            servers.append(ServeProcess({**env, **own}, log=log).start())
        yield servers
    finally:
        for server in servers:
            server.kill(signal.SIGKILL)


@asynccontextmanager
async def background_load(servers: list[ServeProcess]) -> AsyncIterator[LoadResult]:
    """Load on every instance until the block ends; the result fills in as it runs."""
    stop, result = asyncio.Event(), LoadResult()
    loads = [
        asyncio.create_task(
            run_load(
                server.url,
                clients=CLIENTS_PER_INSTANCE,
                duration=120,
                namespaces=NAMESPACES,
                sizes=(1, 500),
                seed=i,
                stop=stop,
                result=result,
            )
        )
        for i, server in enumerate(servers)
    ]
    try:
        yield result
    finally:
        stop.set()
        await asyncio.gather(*loads)


async def served_by_redis_again(result: LoadResult, timeout: float = 20) -> None:
    """Wait until the primary layer serves again after a fault."""
    seen = len(result.acknowledged)
    async with asyncio.timeout(timeout):
        while not any(r.source == SOURCE_REDIS for r in result.acknowledged[seen:]):
            await asyncio.sleep(0.05)


async def health_when(
    url: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10
) -> dict[str, Any]:
    """/health once ``predicate`` holds: it shows the background probe's last answer, at
    most a probe interval old."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as http:
        while True:
            health: dict[str, Any] = (await http.get(f"{url}/health")).json()
            if predicate(health) or time.monotonic() > deadline:
                return health
            await asyncio.sleep(0.1)


def assert_clean(result: LoadResult) -> None:
    """No overlap, no failed request, and the Redis layer did serve."""
    verdict = check(result.acknowledged)
    assert verdict.ok, verdict.summary()
    assert set(result.statuses) == {200} and not result.errors, (result.statuses, result.errors)
    sources = {r.source for r in result.acknowledged}
    assert SOURCE_REDIS in sources, sources


def lag_replicas_then_fail_over(cluster: LocalCluster) -> None:
    """Make the replicas miss the master's latest writes, then promote one of them."""
    master, replicas = cluster.master(), cluster.replicas()
    for replica in replicas:
        replica.pause()
    client = master.client()
    filler = b"x" * 1024 * 1024
    for i in range(LAG_MEGABYTES):
        client.set(f"filler:{i}", filler)
    time.sleep(1.0)  # the master keeps acknowledging allocations the replicas will never see
    master.pause()
    for replica in replicas:
        replica.resume()
    cluster.wait_for_failover(master, timeout=30)
    master.resume()


async def test_master_killed(cluster: LocalCluster, postgres_url: str, tmp_path: Path) -> None:
    """(a) SIGKILL of the master under load: zero overlaps, zero failed requests, and the
    Redis layer serves again after the failover."""
    async with instances(tmp_path, service_env(cluster, postgres_url)) as servers:
        async with background_load(servers) as result:
            await wait_for_acks(result, 300, timeout=30)
            old = cluster.master()
            old.kill(signal.SIGKILL)
            new = cluster.wait_for_failover(old, timeout=30)
            await served_by_redis_again(result)
            await wait_for_acks(result, len(result.acknowledged) + 300, timeout=30)
            health = await health_when(servers[0].url, lambda h: h["redis_health"] == "healthy")
    assert_clean(result)
    assert health["redis_health"] == "healthy"
    assert health["redis"]["master"] == f"127.0.0.1:{new.port}"
    assert health["redis"]["failovers"] == 1 and health["redis"]["last_failover_at"]
    assert health["redis"]["sentinel_quorum"] is True


async def test_paused_master_split_brain(
    cluster: LocalCluster, postgres_url: str, tmp_path: Path
) -> None:
    """(b) The master paused past the failover, then resumed while clients still hold
    connections to it: both masters serve for a while, from disjoint leases."""
    async with instances(tmp_path, service_env(cluster, postgres_url)) as servers:
        async with background_load(servers) as result:
            await wait_for_acks(result, 300, timeout=30)
            old = cluster.master()
            stale = old.client(socket_timeout=5)  # a connection that survives the pause
            stale.ping()
            old.pause()
            cluster.wait_for_failover(old, timeout=30)
            old.resume()
            # The old master still takes writes on open connections until Sentinel demotes
            # it (~10 s measured): allocate through it the way a stale pooled connection would.
            split_brain = []
            for _ in range(50):
                reply = stale.fcall(fn.ALLOCATE, 1, REDIS_LEASE_KEY.format("default"), 7)
                if reply[0] != "OK":
                    break
                start = int(reply[1]) + int(reply[2]) - 7
                split_brain.append(Record("default", start, start + 6, 7, 7, "old master"))
            await served_by_redis_again(result)
            await wait_for_acks(result, len(result.acknowledged) + 300, timeout=30)
    assert_clean(result)
    assert split_brain, "the resumed old master never served: no split brain was exercised"
    verdict = check(result.acknowledged + split_brain)
    assert verdict.ok, verdict.summary()


async def test_lagging_replica_promoted(
    cluster: LocalCluster, postgres_url: str, tmp_path: Path
) -> None:
    """(c) Replicas that missed the latest allocations, one promoted: the fence sends every
    instance to a fresh lease instead of re-serving the lost tail."""
    async with instances(tmp_path, service_env(cluster, postgres_url)) as servers:
        async with background_load(servers) as result:
            await wait_for_acks(result, 300, timeout=30)
            await asyncio.to_thread(lag_replicas_then_fail_over, cluster)
            await served_by_redis_again(result)
            await wait_for_acks(result, len(result.acknowledged) + 300, timeout=30)
    assert_clean(result)


async def test_master_restarted_from_aof(
    cluster: LocalCluster, postgres_url: str, tmp_path: Path
) -> None:
    """(d) The master killed and restarted at once from its AOF (which may miss the last
    second): its new run_id fences the old lease, so the lost tail is never re-served."""
    async with instances(tmp_path, service_env(cluster, postgres_url)) as servers:
        async with background_load(servers) as result:
            await wait_for_acks(result, 300, timeout=30)
            master = cluster.master()
            master.kill(signal.SIGKILL)
            master.start()  # before Sentinel's down-after: the same node stays master
            await served_by_redis_again(result)
            await wait_for_acks(result, len(result.acknowledged) + 300, timeout=30)
    assert_clean(result)


async def test_two_instances_refilling_at_once(
    cluster: LocalCluster, postgres_url: str, tmp_path: Path
) -> None:
    """(e) Leases so small that both instances refill all the time, concurrently."""
    env = service_env(
        cluster,
        postgres_url,
        KEYGEN_REDIS_LEASE_SIZE="1000",
        KEYGEN_REDIS_MIN_LEASE_SIZE="1000",
        KEYGEN_REDIS_MAX_LEASE_SIZE="1000",
    )
    async with instances(tmp_path, env) as servers:
        async with background_load(servers) as result:
            await wait_for_acks(result, 1500, timeout=60)
    assert_clean(result)
    redis_served = [r for r in result.acknowledged if r.source == SOURCE_REDIS]
    assert len(redis_served) > 1000


async def test_a_sentinel_that_is_down_is_asked_once(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(f) Discovery asks a Sentinel that resets the connection once, then the next one:
    redis-py's default would try it 10 more times, with backoffs of up to 1 s, and the
    layer would time out all the while (seen with a Sentinel killed during a failover)."""
    attempts = 0

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        attempts += 1
        writer.transport.abort()

    down = await asyncio.start_server(reset, "127.0.0.1", 0)
    env = cluster.env()
    hosts = f"127.0.0.1:{down.sockets[0].getsockname()[1]},{env['REDIS_SENTINEL_HOSTS']}"
    for name, value in {**env, "REDIS_SENTINEL_HOSTS": hosts}.items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)
    sentinel = sentinels_of(settings)
    try:
        async with down:
            host, port = await sentinel.discover_master(settings.redis_sentinel_master_name)
    finally:
        await sentinel.aclose()
    assert (host, int(port)) == ("127.0.0.1", cluster.master().port)
    assert attempts == 1


def naive_allocate(client: redis.Redis, namespace: str, size: int) -> Record:
    """The allocator this design refuses: INCRBY on a counter Redis owns."""
    end = int(client.incrby(f"naive:{namespace}", size))
    return Record(namespace, end - size + 1, end, size, size, "naive")


async def test_naive_incrby_duplicates_under_replication_lag(cluster: LocalCluster) -> None:
    """The same lagging-replica failover as (c) makes a naive INCRBY allocator hand out
    duplicates, and the checker finds them: the scenario and the checker have teeth."""
    sentinel = Sentinel(
        [
            (host, int(port))
            for host, port in (
                item.split(":") for item in cluster.env()["REDIS_SENTINEL_HOSTS"].split(",")
            )
        ],
        socket_timeout=0.25,
    )
    stop = threading.Event()
    acknowledged: list[Record] = []

    def naive_load() -> None:
        master = sentinel.master_for("mymaster", socket_timeout=0.25)
        while not stop.is_set():
            try:
                acknowledged.append(naive_allocate(master, "default", 100))
            except redis.RedisError:
                time.sleep(0.02)

    workers = [asyncio.create_task(asyncio.to_thread(naive_load)) for _ in range(4)]
    try:
        while len(acknowledged) < 500:
            await asyncio.sleep(0.05)
        await asyncio.to_thread(lag_replicas_then_fail_over, cluster)
        after_failover = len(acknowledged)
        while len(acknowledged) < after_failover + 2000:
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*workers)
    verdict = check(acknowledged)
    assert not verdict.ok
    assert verdict.duplicate_ids > 1000, verdict.summary()
