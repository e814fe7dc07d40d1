"""Zero-downtime upgrade (docs/upgrade.md): the previous release and the current code side by
side on one PostgreSQL and one Redis Sentinel topology under load, the instances upgraded one
at a time (SIGTERM drains the old one, the new one starts in its place), then the overlap
checker over every acknowledged range: no duplicate, no failed request. And the ledger's
newest migration only expands the schema, so that two consecutive versions run on it."""

from __future__ import annotations

import asyncio
import io
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import asyncpg
import httpx
import pytest

from keygen.checker import Record, check
from keygen.client import AsyncKeygenClient
from keygen.cluster import maintenance
from keygen.cluster.topology import LocalCluster
from keygen.constants import SOURCE_REDIS
from keygen.ledgers import postgres_migrations
from tests.support.load import LoadResult, wait_for_acks
from tests.support.processes import ServeProcess, free_port

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
#: The previous release: the last commit recorded before the monitoring work (2026-11-24,
#: "benchmarks/README: says how the test load's figures were measured"). It has neither
#: /health/live nor the shared-memory figures, so the test can tell the versions apart.
PREVIOUS = "e6a1d91"
INSTANCES = 3
CLIENTS = 9
#: Acknowledgements to wait for between two steps of the upgrade.
STEP = 300


@pytest.fixture(scope="module")
def previous_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``src`` folder of the previous release, exported with ``git archive`` (as
    benchmarks/allocate.py --against does): run with PYTHONPATH, it shadows the installed
    package and reuses the virtualenv's dependencies."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{PREVIOUS}^{{commit}}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "src"],
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    into = tmp_path_factory.mktemp(f"keygen-{commit[:7]}")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def has_live_endpoint(server: ServeProcess) -> bool:
    """True for the current code, False for the previous release (404)."""
    return httpx.get(f"{server.url}/health/live", timeout=5).status_code == 200


async def test_rolling_upgrade_from_the_previous_release(
    cluster: LocalCluster, postgres_url: str, previous_src: Path, tmp_path: Path
) -> None:
    """Three instances of the previous release under load from clients that know them all
    are replaced one at a time by the current code, each after draining: both versions serve
    side by side from one Redis and one ledger, every request gets its range, none overlaps."""
    env = {
        **cluster.env(),
        "KEYGEN_DATABASE_URL": postgres_url,
        "ALLOCATION_TIMEOUT": "10",
        "KEYGEN_REDIS_TIMEOUT": "0.5",
        "KEYGEN_REDIS_SOCKET_TIMEOUT": "0.25",
    }
    ports = [free_port() for _ in range(INSTANCES)]

    def instance(i: int, *, previous: bool) -> ServeProcess:
        own = {**env, "KEYGEN_INSTANCE_ID": f"i{i}"}
        if previous:
            own["PYTHONPATH"] = str(previous_src)
        return ServeProcess(own, log=tmp_path / f"serve-{i}.log", port=ports[i])

    servers = [instance(i, previous=True) for i in range(INSTANCES)]
    stop, result = asyncio.Event(), LoadResult()
    failures: list[str] = []

    async def client_loop(i: int) -> None:
        urls = [servers[(i + k) % INSTANCES].url for k in range(INSTANCES)]
        async with AsyncKeygenClient(urls, timeout=15, retries=2 * INSTANCES) as keygen:
            while not stop.is_set():
                size = 1 + i * 37
                try:
                    got = await keygen.allocate(size=size, namespace=("default", "orders")[i % 2])
                except Exception as exc:
                    failures.append(repr(exc))
                    await asyncio.sleep(0.05)
                    continue
                result.acknowledged.append(
                    Record(got.namespace, got.start, got.end, got.size, size, got.source)
                )

    loops: list[asyncio.Task[None]] = []
    try:
        for server in servers:
            await asyncio.to_thread(server.start)
        assert not any(has_live_endpoint(s) for s in servers), "not the previous release"
        loops = [asyncio.create_task(client_loop(i)) for i in range(CLIENTS)]
        await wait_for_acks(result, STEP, timeout=30)
        for i in range(INSTANCES):
            await asyncio.to_thread(servers[i].stop)  # SIGTERM: drains, then exits
            servers[i] = instance(i, previous=False)
            await asyncio.to_thread(servers[i].start)
            assert has_live_endpoint(servers[i])
            await wait_for_acks(result, len(result.acknowledged) + STEP, timeout=30)
        stop.set()
        await asyncio.gather(*loops)
    finally:
        stop.set()
        for task in loops:
            task.cancel()
        for server in servers:
            server.kill(signal.SIGKILL)
    assert not failures, failures[:5]
    verdict = check(result.acknowledged)
    assert verdict.ok, verdict.summary()
    assert verdict.ranges >= (INSTANCES + 1) * STEP
    assert {r.source for r in result.acknowledged} == {SOURCE_REDIS}


async def _columns(conn: asyncpg.Connection) -> dict[tuple[str, str], tuple[str, bool, bool]]:
    """(table, column) -> (type, nullable, has a default) for every keygen_ table."""
    rows = await conn.fetch(
        "SELECT table_name, column_name, data_type, is_nullable = 'YES' AS nullable,"
        " column_default IS NOT NULL OR is_identity = 'YES' AS defaulted"
        " FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name LIKE 'keygen\\_%'"
    )
    return {
        (r["table_name"], r["column_name"]): (r["data_type"], r["nullable"], r["defaulted"])
        for r in rows
    }


async def test_newest_migration_only_expands_the_schema(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Expand-then-contract: the newest migration drops, renames and retypes nothing, and
    every column it adds to an existing table is nullable or has a default, so the code of
    the version before it reads and writes the migrated schema as it did its own."""
    newest = postgres_migrations.MIGRATIONS[-1]
    conn = await asyncpg.connect(postgres_url)
    try:
        monkeypatch.setattr(postgres_migrations, "MIGRATIONS", postgres_migrations.MIGRATIONS[:-1])
        monkeypatch.setattr(postgres_migrations, "LATEST_VERSION", newest.version - 1)
        assert await postgres_migrations.migrate(conn) == newest.version - 1
        before = await _columns(conn)
        monkeypatch.undo()
        assert await postgres_migrations.migrate(conn) == newest.version
        after = await _columns(conn)
    finally:
        await conn.close()
    assert before, "no table before the newest migration"
    for key, (data_type, nullable, _) in before.items():
        assert key in after, f"{key} removed by migration {newest.version}"
        assert after[key][0] == data_type, f"{key} retyped by migration {newest.version}"
        assert after[key][1] or not nullable, f"{key} made NOT NULL by migration {newest.version}"
    old_tables = {table for table, _ in before}
    for (table, column), (_, nullable, defaulted) in after.items():
        if table in old_tables and (table, column) not in before:
            assert nullable or defaulted, f"{table}.{column} is required: old writers break"


async def test_redis_rolled_under_load(
    cluster: LocalCluster, postgres_url: str, tmp_path: Path
) -> None:
    """`keygen cluster roll` (Sentinels, replicas, a planned failover, the old master) under
    load from two instances: every request gets its range, none overlaps, and the master
    has moved."""
    env = {
        **cluster.env(),
        "KEYGEN_DATABASE_URL": postgres_url,
        "ALLOCATION_TIMEOUT": "10",
        "KEYGEN_REDIS_TIMEOUT": "0.5",
        "KEYGEN_REDIS_SOCKET_TIMEOUT": "0.25",
    }
    servers = [
        ServeProcess({**env, "KEYGEN_INSTANCE_ID": f"i{i}"}, log=tmp_path / f"serve-{i}.log")
        for i in range(2)
    ]
    stop, result = asyncio.Event(), LoadResult()
    failures: list[str] = []

    async def client_loop(i: int) -> None:
        urls = [servers[i % 2].url, servers[(i + 1) % 2].url]
        async with AsyncKeygenClient(urls, timeout=15, retries=4) as keygen:
            while not stop.is_set():
                try:
                    got = await keygen.allocate(size=1 + i, namespace="default")
                except Exception as exc:
                    failures.append(repr(exc))
                    await asyncio.sleep(0.05)
                    continue
                result.acknowledged.append(
                    Record(got.namespace, got.start, got.end, got.size, 1 + i, got.source)
                )

    loops: list[asyncio.Task[None]] = []
    try:
        for server in servers:
            await asyncio.to_thread(server.start)
        loops = [asyncio.create_task(client_loop(i)) for i in range(6)]
        await wait_for_acks(result, STEP, timeout=30)
        first = cluster.master()
        master = await asyncio.to_thread(maintenance.rolling_restart, cluster, 60.0)
        assert master is not first and cluster.master() is master
        await wait_for_acks(result, len(result.acknowledged) + STEP, timeout=30)
        stop.set()
        await asyncio.gather(*loops)
    finally:
        stop.set()
        for task in loops:
            task.cancel()
        for server in servers:
            server.kill(signal.SIGKILL)
    assert not failures, failures[:5]
    verdict = check(result.acknowledged)
    assert verdict.ok, verdict.summary()
    assert SOURCE_REDIS in {r.source for r in result.acknowledged[-STEP:]}


def test_cluster_failover_command(cluster: LocalCluster) -> None:
    """`keygen cluster failover --dir` moves the master to another node, and says which."""
    first = cluster.master()
    done = subprocess.run(
        [sys.executable, "-m", "keygen", "cluster", "failover", "--dir", str(cluster.directory)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    master = cluster.master()
    assert master is not first
    assert f"the master is {master.name}" in done.stderr
