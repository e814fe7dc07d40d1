"""What ``keygen bench`` measures: a running service, or a topology it starts for the run in a
temporary directory and tears down after, and the bare app beside it.

    embedded   ``keygen serve`` on a fresh ``KEYGEN_DATA_DIR`` (the SQLite ledger)
    postgres   a private PostgreSQL (``PostgresNode``) and ``keygen serve`` on it
    redis      the local cluster (``LocalCluster``: master, 2 replicas, 3 Sentinels,
               PostgreSQL) and ``keygen serve`` on it, its links to each Redis node through
               the chaos proxies, so that the failover table can cut the master's

Every service is one ``keygen serve --workers 1`` on a free port of 127.0.0.1, with the
Keygen settings of the caller's environment removed: a benchmark of "the embedded default"
must not quietly measure whatever ``KEYGEN_DATABASE_URL`` the shell had.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from keygen.bench import TOPOLOGIES, BenchError
from keygen.chaos.instances import ServiceInstance
from keygen.cluster.processes import free_port
from keygen.errors import ClusterError
from keygen.progress import Progress

if TYPE_CHECKING:
    from keygen.chaos.proxy import ProxyServer
    from keygen.cluster.topology import LocalCluster

__all__ = ["TOPOLOGIES", "Target", "Topology", "open_topology", "preflight", "start_bare"]

#: Settings read without the KEYGEN_ prefix (the original product's names).
_UNPREFIXED_SETTINGS = (
    "ID_BLOCK_SIZE",
    "ALLOCATION_TIMEOUT",
    "LOCK_TIMEOUT",
    "REDIS_SENTINEL_HOSTS",
    "REDIS_SENTINEL_MASTER_NAME",
    "REDIS_SENTINEL_QUORUM",
)
_START_TIMEOUT = 30.0


@dataclass(frozen=True)
class Target:
    """One thing measured: what the tables call it, its base URL, and its server's pid when
    the run started it (a test pauses it)."""

    name: str
    url: str
    pid: int | None = None


@dataclass
class Topology:
    """The targets of a run and, for ``redis``, what the failover scenarios act on."""

    target: Target
    bare: Target | None = None
    cluster: LocalCluster | None = None
    proxies: ProxyServer | None = None
    instances: list[ServiceInstance] = field(default_factory=list)


def _clean_env(**settings: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.upper().startswith("KEYGEN_") and name.upper() not in _UNPREFIXED_SETTINGS
    }
    return {**env, "KEYGEN_LOG_LEVEL": "warning", **settings}


def _service(name: str, directory: Path, env: dict[str, str]) -> ServiceInstance:
    instance = ServiceInstance(name, free_port(), env, directory)
    # ServiceInstance lays the caller's environment under ``env``: take its Keygen part out.
    instance.env = {**_clean_env(), **env, "KEYGEN_DATA_DIR": str(directory / "data")}
    instance.start(_START_TIMEOUT)
    return instance


def open_topology(
    kind: str, workdir: Path, stack: ExitStack, say: Progress, down_after_ms: int | None = None
) -> Topology:
    """Start topology ``kind`` under ``workdir``; ``stack`` stops it, whatever happens.
    ``down_after_ms``: the Sentinels' ``down-after-milliseconds`` (None: the cluster's own
    default, the original's 5 s)."""
    if kind == "embedded":
        say("starting keygen serve (embedded: SQLite ledger)")
        instance = _service("keygen-embedded", workdir / "embedded", {})
        stack.callback(instance.kill)
        return Topology(Target("keygen (embedded)", instance.url), instances=[instance])
    if kind == "postgres":
        from keygen.cluster.postgres import PostgresNode

        node = PostgresNode(workdir / "postgres", free_port(), progress=say)
        stack.callback(node.stop, mode="immediate")
        node.start()
        say("starting keygen serve (PostgreSQL ledger)")
        instance = _service(
            "keygen-postgres", workdir / "service", {"KEYGEN_DATABASE_URL": node.database_url}
        )
        stack.callback(instance.kill)
        return Topology(Target("keygen (postgres)", instance.url), instances=[instance])
    if kind == "redis":
        return _redis(workdir, stack, say, down_after_ms)
    raise BenchError(f"unknown topology {kind!r}; known: {', '.join(TOPOLOGIES)}")


def _redis(workdir: Path, stack: ExitStack, say: Progress, down_after_ms: int | None) -> Topology:
    from keygen.chaos.proxy import ProxyServer
    from keygen.cluster.layout import DEFAULT_DOWN_AFTER_MS
    from keygen.cluster.topology import LocalCluster

    cluster = LocalCluster(
        workdir / "cluster", down_after_ms=down_after_ms or DEFAULT_DOWN_AFTER_MS, progress=say
    )
    stack.callback(_down, cluster)
    cluster.up()
    proxies = ProxyServer()
    stack.callback(proxies.close)
    address_map = []
    for node in cluster.redis_nodes:
        proxy = proxies.add(node.name, node.port)
        address_map.append(f"127.0.0.1:{node.port}={proxy.address}")
    say("starting keygen serve (Redis Sentinel, PostgreSQL ledger; Redis through proxies)")
    env = {**cluster.env(), "KEYGEN_REDIS_ADDRESS_MAP": ",".join(address_map)}
    instance = _service("keygen-redis", workdir / "service", env)
    stack.callback(instance.kill)
    return Topology(
        Target("keygen (redis)", instance.url),
        cluster=cluster,
        proxies=proxies,
        instances=[instance],
    )


def _down(cluster: LocalCluster) -> None:
    for node in [*cluster.redis_nodes, *cluster.sentinels]:
        try:
            if node.is_running() and node.is_paused():
                node.resume()  # a paused node would not hear the stop
        except (ClusterError, OSError):
            pass
    cluster.down()
    cluster.kill_all()


def start_bare(workdir: Path, stack: ExitStack) -> Target:
    """The bare app (``keygen.bench.bare``) under uvicorn as Keygen runs: 1 worker, uvloop,
    httptools, no access log."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "uvicorn", "keygen.bench.bare:app", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--workers", "1", "--loop", "uvloop", "--http", "httptools"]
    argv += ["--no-access-log", "--log-level", "warning"]
    with (workdir / "bare.log").open("ab") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=_clean_env(), start_new_session=True
        )
    stack.callback(_stop, proc)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + _START_TIMEOUT
    while not _answers(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"the bare app did not start (log: {workdir / 'bare.log'})")
        time.sleep(0.05)
    return Target("bare app", url, proc.pid)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


def _answers(url: str) -> bool:
    try:
        _request(url, "GET", "/health", None, None)
    except OSError:
        return False
    return True


def _request(
    url: str, method: str, path: str, body: bytes | None, api_key: str | None
) -> tuple[int, bytes]:
    # http.client: no proxy from the environment can get between the bench and 127.0.0.1.
    address = urlsplit(url)
    conn = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port, timeout=5)
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    try:
        conn.request(method, address.path.rstrip("/") + path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def preflight(target: Target, size: int, namespace: str, api_key: str | None) -> str:
    """One ``POST /allocate`` before any load: the source that served it; a clear error if
    the target does not answer, or answers anything but a 2xx."""
    body = json.dumps({"size": size, "namespace": namespace}).encode()
    try:
        status, answer = _request(target.url, "POST", "/allocate", body, api_key)
    except OSError as exc:
        raise BenchError(f"{target.name} at {target.url} does not answer: {exc}") from exc
    if not 200 <= status < 300:
        hint = " (pass --api-key)" if status in (401, 403) else ""
        text = answer.decode(errors="replace")[:300]
        raise BenchError(f"{target.name}: POST /allocate answered {status}{hint}: {text}")
    try:
        return str(json.loads(answer).get("source", "?"))
    except (ValueError, AttributeError):
        return "?"
