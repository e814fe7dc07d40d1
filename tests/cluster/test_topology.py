"""The local topology against real processes: Redis master + 2 replicas, 3 Sentinels and
PostgreSQL on free ports, with ``down-after-milliseconds 1000``.

Tests run in file order: the CLI test first (its own cluster), then the tests that share
the module's cluster, ending with the failover and with ``down``, which stops it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from keygen.cluster import STATE_FILE, ClusterError, LocalCluster, processes
from keygen.cluster.binaries import find_redis_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

DOWN_AFTER_MS = 1000


def _scratch_dir(prefix: str) -> Path:
    """A temp dir the ``postgres`` user can reach (pytest's tmp_path is 0700 root's)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """One running topology shared by the module's tests; always stopped at the end."""
    base = _scratch_dir("keygen-cluster-")
    local = LocalCluster(base / "cluster", down_after_ms=DOWN_AFTER_MS)
    try:
        local.up(timeout=45)
        yield local
    finally:
        local.down()
        local.kill_all()
        shutil.rmtree(base, ignore_errors=True)


def _keygen(*args: str, timeout: float = 45) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keygen", "cluster", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _check_the_eval_hint(stderr: str, exports: dict[str, str]) -> None:
    """Run the `eval` line of `up`'s "Next:" hint in a shell, as a user would paste it."""
    hints = [line.strip() for line in stderr.splitlines() if line.strip().startswith("eval ")]
    assert len(hints) == 1, stderr
    keygen = f"{shlex.quote(sys.executable)} -m keygen"
    script = hints[0].replace("$(keygen ", f"$({keygen} ") + ' && echo "$REDIS_SENTINEL_HOSTS"'
    shell = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert shell.returncode == 0, (hints[0], shell.stderr)
    assert shell.stdout.strip() == shlex.split(exports["REDIS_SENTINEL_HOSTS"])[0]


def test_cli_up_status_down() -> None:
    """`keygen cluster up` leaves a ready topology running after it exits and prints its
    environment and a "Next:" hint whose `eval` line works as pasted, refuses a second
    `up`, `status --json` shows every role, and `down` stops every process it recorded."""
    base = _scratch_dir("keygen-cli-")
    where = str(base / "cluster")
    try:
        up = _keygen("up", "--dir", where, "--base-port", "0", "--down-after-ms", "1000")
        assert up.returncode == 0, up.stderr
        exports = dict(
            line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines()
        )
        assert set(exports) == {
            "REDIS_SENTINEL_HOSTS",
            "REDIS_SENTINEL_MASTER_NAME",
            "REDIS_SENTINEL_QUORUM",
            "KEYGEN_DATABASE_URL",
        }
        assert len(exports["REDIS_SENTINEL_HOSTS"].split(",")) == 3
        _check_the_eval_hint(up.stderr, exports)

        again = _keygen("up", "--dir", where, "--base-port", "0")
        assert again.returncode == 1 and "already running" in again.stderr

        status = _keygen("status", "--dir", where, "--json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        roles = sorted(p["role"] for p in report["processes"])
        assert roles == [
            "ledger",
            "master",
            "replica",
            "replica",
            "sentinel",
            "sentinel",
            "sentinel",
        ]
        pids = [p["pid"] for p in report["processes"]]
        assert all(processes.is_alive(pid) for pid in pids)

        down = _keygen("down", "--dir", where)
        assert down.returncode == 0, down.stderr
        processes.wait_gone(pids, timeout=10)
        nothing = _keygen("down", "--dir", where)
        assert nothing.returncode == 0 and "nothing is running" in nothing.stderr
    finally:
        if LocalCluster.exists(where):
            leftover = LocalCluster.load(where)
            leftover.down()
            leftover.kill_all()
        shutil.rmtree(base, ignore_errors=True)


def test_up_starts_a_ready_topology(cluster: LocalCluster) -> None:
    """After `up`, status shows one master, two in-sync replicas, three Sentinels that all
    name the master, and a ledger that answers SQL; cluster.json records every pid."""
    status = cluster.status()
    assert [status.count(role) for role in ("master", "replica", "sentinel", "ledger")] == [
        1,
        2,
        3,
        1,
    ]
    master = cluster.master()
    assert master is cluster.redis_nodes[0]
    assert status.master == ("127.0.0.1", master.port)
    assert status.master_votes == status.sentinels_answering == 3
    assert all(node.in_sync() for node in cluster.redis_nodes[1:])

    recorded = json.loads((cluster.directory / STATE_FILE).read_text())["processes"]
    assert {p["name"]: p["pid"] for p in recorded} == {p.name: p.pid for p in status.processes}
    assert cluster.postgres is not None
    assert cluster.postgres.psql("SELECT count(*) FROM pg_stat_activity", "keygen").isdigit()
    assert cluster.env()["KEYGEN_DATABASE_URL"] == cluster.postgres.database_url


def test_paused_replica_catches_up(cluster: LocalCluster) -> None:
    """A replica stopped with SIGSTOP while the master takes writes is reported paused, and
    once resumed it is back in sync with every write."""
    replica = cluster.replicas()[0]
    master = cluster.master()
    replica.pause()
    try:
        assert cluster.status().processes[cluster.redis_nodes.index(replica)].state == "paused"
        with master.client() as client:
            pipe = client.pipeline(transaction=False)
            for i in range(2000):
                pipe.set(f"paused:{i}", i)
            pipe.execute()
            # Longer than down-after-milliseconds: the Sentinels see it as down meanwhile.
            time.sleep(DOWN_AFTER_MS / 1000 * 1.5)
    finally:
        replica.resume()
    cluster.wait_in_sync(timeout=15)
    with replica.client() as client:
        assert client.get("paused:1999") == "1999"
    assert replica.info_replication()["master_link_status"] == "up"


def test_sigkill_of_master_fails_over(cluster: LocalCluster) -> None:
    """SIGKILL of the master makes the Sentinels promote a replica within seconds; status and
    master() report the new master, which takes writes, and the other replica follows it."""
    old = cluster.master()
    started = time.monotonic()
    old.kill(signal.SIGKILL)
    new = cluster.wait_for_failover(old, timeout=20)
    elapsed = time.monotonic() - started
    assert new is not old and new.role() == "master"
    assert elapsed < 15, f"failover took {elapsed:.1f}s"
    print(f"failover after SIGKILL: {elapsed:.2f}s")

    assert cluster.master() is new
    status = cluster.status()
    assert status.master == ("127.0.0.1", new.port)
    assert {p.name: p.state for p in status.processes}[old.name] == "stopped"
    with new.client() as client:
        assert client.set("after-failover", "1")
    cluster.wait_in_sync(timeout=15)


def test_down_stops_exactly_the_recorded_processes(cluster: LocalCluster) -> None:
    """`down` from another process stops every recorded process but leaves alone a decoy
    redis-server and a process whose pid was swapped into the state file for a recorded one."""
    redis_server = find_redis_server()
    assert redis_server is not None
    scratch = _scratch_dir("keygen-decoy-")
    decoy_port = processes.free_port()
    decoys = [
        subprocess.Popen(
            [
                str(redis_server),
                "--port",
                str(decoy_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                str(scratch),
            ],
            stdout=subprocess.DEVNULL,
        ),
        subprocess.Popen(["sleep", "60"]),
    ]
    try:
        swapped = cluster.sentinels[-1]
        state_path = cluster.directory / STATE_FILE
        state = json.loads(state_path.read_text())
        for entry in state["processes"]:
            if entry["name"] == swapped.name:  # as if the pid had been recycled
                entry["pid"] = decoys[1].pid
                entry["start_time"] = processes.start_time(decoys[1].pid)
        state_path.write_text(json.dumps(state))
        expected_gone = [n.pid for n in cluster.nodes() if n.is_running() and n is not swapped]

        report = LocalCluster.load(cluster.directory).down()

        assert any("another process; left alone" in line for line in report), report
        processes.wait_gone([pid for pid in expected_gone if pid is not None], timeout=10)
        assert all(decoy.poll() is None for decoy in decoys)
        assert swapped.is_running()  # not recorded any more, so not touched
        with pytest.raises(ClusterError, match="ports already in use"):
            LocalCluster.load(cluster.directory).up(timeout=5)  # its port is still taken
    finally:
        for decoy in decoys:
            decoy.kill()
            decoy.wait()
        shutil.rmtree(scratch, ignore_errors=True)
        cluster.down()
    assert not any(node.is_running() for node in cluster.nodes())
    assert os.path.exists(cluster.directory / "redis-1" / "appendonlydir")
