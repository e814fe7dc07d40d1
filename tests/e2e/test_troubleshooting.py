"""The troubleshooting commands docs/deployment.md gives, run against a real topology."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from keygen.cluster.binaries import find_postgres_bin_dir
from keygen.cluster.topology import LocalCluster
from keygen.ledgers.postgres import PostgresLedger

pytestmark = pytest.mark.e2e

DEPLOYMENT_DOC = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    topology = LocalCluster(tmp_path_factory.mktemp("cluster"), with_postgres=False)
    topology.up()
    try:
        yield topology
    finally:
        topology.kill_all()


def redis_cli(port: int, *command: str) -> str:
    cli = shutil.which("redis-cli")
    assert cli is not None, "redis-cli comes with redis-server (Debian's redis-tools)"
    result = subprocess.run(
        [cli, "-p", str(port), *command], capture_output=True, text=True, timeout=10
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def port_lookup_snippet() -> str:
    """The troubleshooting section's first code block: it reads the ports into variables."""
    section = DEPLOYMENT_DOC.read_text().split("## Troubleshooting", 1)[1]
    match = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert match is not None, "no bash block in docs/deployment.md's Troubleshooting"
    return match.group(1)


def test_the_port_lookup_reads_the_running_clusters_ports(cluster: LocalCluster) -> None:
    """The documented lines that set S1, R2, PG and M from `keygen cluster status --json` give
    the ports this cluster really uses (free ones, not the defaults)."""
    snippet = port_lookup_snippet()
    keygen = str(Path(sys.executable).with_name("keygen"))
    status = "keygen cluster status --json"
    assert status in snippet, snippet
    script = snippet.replace(status, f"{keygen} cluster status --json --dir {cluster.directory}")
    result = subprocess.run(
        ["bash", "-c", script + 'echo "S1=$S1 R2=$R2 PG=$PG M=$M"'],
        capture_output=True,
        text=True,
        timeout=30,
    )
    redis_2 = next(node for node in cluster.redis_nodes if node.name == "redis-2")
    # This cluster runs without PostgreSQL: PG is empty.
    expected = f"S1={cluster.sentinels[0].port} R2={redis_2.port} PG= M={cluster.master().port}"
    assert result.stdout.strip() == expected, result.stderr


def test_the_sentinel_commands_answer_as_documented(cluster: LocalCluster) -> None:
    """sentinel masters, get-master-addr-by-name, ckquorum, master, replicas and sentinels
    answer with what the docs say they show; `sentinel config get mymaster` (the original's)
    answers nothing on Redis 7, as the docs warn."""
    sentinel = cluster.sentinels[0].port
    master = cluster.master().port
    assert "mymaster" in redis_cli(sentinel, "sentinel", "masters")
    address = redis_cli(sentinel, "sentinel", "get-master-addr-by-name", "mymaster").split()
    assert address == ["127.0.0.1", str(master)]
    assert redis_cli(sentinel, "sentinel", "ckquorum", "mymaster").startswith("OK 3 usable")
    assert "num-slaves" in redis_cli(sentinel, "sentinel", "master", "mymaster")
    assert redis_cli(sentinel, "sentinel", "replicas", "mymaster").count("master-link-status") == 2
    assert "runid" in redis_cli(sentinel, "sentinel", "sentinels", "mymaster")
    assert redis_cli(sentinel, "sentinel", "config", "get", "mymaster").strip() == ""


def test_the_redis_node_commands_answer_as_documented(cluster: LocalCluster) -> None:
    """info memory on the master, info replication on a replica (its link and offsets), and
    the scan for refill locks all run."""
    assert "used_memory:" in redis_cli(cluster.master().port, "info", "memory")
    replica = redis_cli(cluster.replicas()[0].port, "info", "replication")
    assert "role:slave" in replica and "master_link_status:up" in replica
    redis_cli(cluster.master().port, "--scan", "--pattern", "keygen:refill-lock:*")


def test_the_ledger_query_names_the_counters_table(postgres_url: str) -> None:
    """The documented psql query reads the ledger's counters table of a migrated database."""

    async def migrate() -> None:
        ledger = await PostgresLedger.open(postgres_url)
        await ledger.aclose()

    asyncio.run(migrate())
    bin_dir = find_postgres_bin_dir()
    psql = shutil.which("psql") or str(Path(bin_dir or "/usr/bin") / "psql")
    result = subprocess.run(
        [psql, postgres_url, "-c", "SELECT namespace, last_id, updated_at FROM keygen_counters"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "namespace | last_id | updated_at" in result.stdout
