"""The local topology: a Redis master, 2 replicas, 3 Sentinels and a PostgreSQL ledger.

``LocalCluster(directory).up()`` starts them all on 127.0.0.1 (ports as in
:mod:`keygen.cluster.layout`), waits until the replicas are in sync, every Sentinel knows the
master, both replicas and both other Sentinels and ``SENTINEL CKQUORUM`` passes, and
PostgreSQL accepts connections; then it records every pid and port in ``cluster.json``
(:mod:`keygen.cluster.state`). ``LocalCluster.load(directory)`` reattaches to it from
another process; ``down()`` stops exactly the recorded processes, each checked through
``/proc`` (start time and command line) before it is signalled. The waits for readiness
after a fault come from :class:`~keygen.cluster.readiness.Readiness`.

``secure=True`` makes every link TLS, with ACL users and generated passwords
(:mod:`keygen.cluster.security`); :meth:`LocalCluster.env` then names the ``keygen`` user's
credentials, the certificates and a ``verify-full`` database URL.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from keygen.cluster import processes as _proc
from keygen.cluster.binaries import ensure_postgres_bin_dir, ensure_redis_server
from keygen.cluster.layout import (
    DEFAULT_APPENDFSYNC,
    DEFAULT_BASE_PORT,
    DEFAULT_DOWN_AFTER_MS,
    DEFAULT_FAILOVER_TIMEOUT_MS,
    DEFAULT_MASTER_NAME,
    DEFAULT_QUORUM,
    HOST,
    SENTINELS,
    Ports,
)
from keygen.cluster.node import Node
from keygen.cluster.postgres import PostgresNode
from keygen.cluster.readiness import Readiness
from keygen.cluster.redis import RedisNode, SentinelNode
from keygen.cluster.security import Security
from keygen.cluster.state import STATE_FILE, ClusterSettings, StateFile
from keygen.cluster.status import ClusterStatus, status_of
from keygen.dispensers.redis_functions import LIBRARY, LIBRARY_NAME
from keygen.errors import ClusterError
from keygen.progress import Progress, quiet
from keygen.redact import MASK, redact_url

__all__ = ["DEFAULT_BASE_PORT", "STATE_FILE", "LocalCluster", "Ports"]


class LocalCluster(Readiness):
    """The topology in ``directory``: built from arguments, or reattached with :meth:`load`.

    Args:
        directory: where every node's files and ``cluster.json`` live.
        base_port: the port scheme's base (see :mod:`keygen.cluster.layout`); None: free ports.
        down_after_ms: Sentinel's ``down-after-milliseconds`` (5 s by default, as in the
            original product description).
        master_name: the name the Sentinels monitor.
        quorum: Sentinels that must agree the master is down.
        with_postgres: also run the PostgreSQL ledger.
        failover_timeout_ms: Sentinel's ``failover-timeout``.
        appendfsync: the data nodes' AOF fsync policy.
        progress: called with a line of text at each step.
        secure: TLS only, ACL users and generated passwords on every node (certificates in
            ``directory/tls``, passwords in ``directory/credentials.json``).
    """

    def __init__(
        self,
        directory: Path | str,
        base_port: int | None = None,
        down_after_ms: int = DEFAULT_DOWN_AFTER_MS,
        master_name: str = DEFAULT_MASTER_NAME,
        quorum: int = DEFAULT_QUORUM,
        with_postgres: bool = True,
        *,
        failover_timeout_ms: int = DEFAULT_FAILOVER_TIMEOUT_MS,
        appendfsync: str = DEFAULT_APPENDFSYNC,
        progress: Progress | None = None,
        ports: Ports | None = None,
        secure: bool = False,
    ) -> None:
        if down_after_ms < 1 or failover_timeout_ms < 1:
            raise ValueError("down_after_ms and failover_timeout_ms must be positive")
        if not 1 <= quorum <= SENTINELS:
            raise ValueError(f"quorum must be 1..{SENTINELS}")
        self.directory = Path(directory).absolute()
        self.base_port = base_port
        self.down_after_ms = down_after_ms
        self.master_name = master_name
        self.quorum = quorum
        self.with_postgres = with_postgres
        self.failover_timeout_ms = failover_timeout_ms
        self.appendfsync = appendfsync
        self.progress: Progress = progress or quiet
        if ports is None:
            ports = (
                Ports.free(with_postgres=with_postgres)
                if base_port is None
                else Ports.from_base(base_port, with_postgres=with_postgres)
            )
        self.ports = ports
        self.security = Security(self.directory) if secure else None
        security = self.security
        say = self.progress
        first = ports.redis[0]
        self.redis_nodes = [
            RedisNode(
                self.directory / f"redis-{i + 1}",
                port,
                name=f"redis-{i + 1}",
                replicaof=None if i == 0 else first,
                appendfsync=appendfsync,
                progress=say,
                security=security,
            )
            for i, port in enumerate(ports.redis)
        ]
        self.sentinels = [
            SentinelNode(
                self.directory / f"sentinel-{i + 1}",
                port,
                name=f"sentinel-{i + 1}",
                master_port=first,
                master_name=master_name,
                quorum=quorum,
                down_after_ms=down_after_ms,
                failover_timeout_ms=failover_timeout_ms,
                progress=say,
                security=security,
            )
            for i, port in enumerate(ports.sentinels)
        ]
        self.postgres: PostgresNode | None = (
            PostgresNode(
                self.directory / "postgres", ports.postgres, progress=say, security=security
            )
            if ports.postgres is not None
            else None
        )
        self._state = StateFile(self.directory)
        for node in self.nodes():
            node.on_start = self.save_state  # keeps cluster.json current across restarts

    # -- state file -----------------------------------------------------------------------

    def nodes(self) -> Iterator[Node]:
        """Every node: Redis, Sentinels, then PostgreSQL."""
        yield from self.redis_nodes
        yield from self.sentinels
        if self.postgres is not None:
            yield self.postgres

    def save_state(self) -> None:
        """Write ``cluster.json`` (atomically): the settings, and each node's port and pid."""
        settings = ClusterSettings(
            self.master_name,
            self.quorum,
            self.down_after_ms,
            self.failover_timeout_ms,
            self.appendfsync,
            self.base_port,
            self.ports,
            self.secure,
        )
        self._state.write(settings, self.nodes())

    @classmethod
    def load(cls, directory: Path | str, progress: Progress | None = None) -> LocalCluster:
        """Reattach to the topology recorded in ``directory/cluster.json``."""
        settings, recorded = StateFile(Path(directory).absolute()).read()
        cluster = cls(
            directory,
            settings.base_port,
            settings.down_after_ms,
            settings.master_name,
            settings.quorum,
            settings.ports.postgres is not None,
            progress=progress,
            failover_timeout_ms=settings.failover_timeout_ms,
            appendfsync=settings.appendfsync,
            ports=settings.ports,
            secure=settings.secure,
        )
        for node in cluster.nodes():
            node.attach(*recorded.get(node.name, (None, None)))
        return cluster

    @staticmethod
    def exists(directory: Path | str) -> bool:
        """Whether ``directory`` holds a recorded cluster."""
        return StateFile(Path(directory)).exists()

    @property
    def secure(self) -> bool:
        """Whether every link is TLS with ACL users and passwords."""
        return self.security is not None

    # -- up -------------------------------------------------------------------------------

    def running(self) -> list[Node]:
        """The nodes whose recorded process runs."""
        return [node for node in self.nodes() if node.is_running()]

    def up(self, timeout: float = 90.0) -> LocalCluster:
        """Start every node and wait until the topology is ready (see the module docstring).

        On failure (or Ctrl-C) whatever was started is stopped again before the error
        propagates.
        """
        if alive := self.running():
            raise ClusterError(
                f"a cluster is already running in {self.directory}: "
                + ", ".join(f"{n.name} (pid {n.pid})" for n in alive)
            )
        if busy := self.ports.busy():
            raise ClusterError(f"ports already in use on {HOST}: {busy}")
        deadline = time.monotonic() + timeout
        fresh = not self._state.exists()
        self.directory.mkdir(parents=True, exist_ok=True)
        ensure_redis_server(self.progress)
        if self.postgres is not None:
            ensure_postgres_bin_dir(self.progress)
        if self.security is not None:
            self.progress(
                f"secure: certificates in {self.security.certs.directory}, passwords in "
                f"{self.security.credentials_path} (TLS only, ACL users)"
            )
        for server in [*self.redis_nodes, *self.sentinels]:
            server.write_config(overwrite=fresh)
        self.save_state()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="keygen-pg") as pool:
            ledger: Future[None] | None = None
            if self.postgres is not None:  # initdb is the slow part: overlap it with Redis
                ledger = pool.submit(self._start_postgres, self.postgres, deadline)
            try:
                self._start_redis(deadline, fresh=fresh)
                if ledger is not None:
                    ledger.result(timeout=max(0.0, deadline - time.monotonic()))
            except BaseException:
                if ledger is not None:
                    ledger.exception()  # let initdb/pg_ctl finish before stopping it
                self.progress("start failed: stopping what was started")
                self.down()
                raise
        self.save_state()
        return self

    def _start_postgres(self, node: PostgresNode, deadline: float) -> None:
        self.progress(f"starting {node.name} (ledger) on {HOST}:{node.port}")
        node.start(timeout=max(1.0, deadline - time.monotonic()))
        self.progress(f"{node.name} accepts connections: {redact_url(node.database_url)}")

    def _start_redis(self, deadline: float, *, fresh: bool) -> None:
        for node in self.redis_nodes:
            self.progress(f"starting {node.name} (appendonly) on {HOST}:{node.port}")
            node.start(timeout=max(1.0, deadline - time.monotonic()))
        if not fresh:
            # A restart: the Sentinels' files name the current master, and a node that was
            # down through a failover still believes it is master until they demote it.
            self._start_sentinels(deadline)
            self.progress("waiting for the Sentinels to settle the roles")
        _proc.wait_until(
            self._replication_ready,
            max(1.0, deadline - time.monotonic()),
            "the replicas to be in sync with the master",
            self._replication_detail,
        )
        roles = {node.name: node.role() for node in self.redis_nodes}
        self.progress(
            "replication ready: master "
            + ", ".join(n for n, r in roles.items() if r == "master")
            + "; replicas "
            + ", ".join(n for n, r in roles.items() if r == "replica")
            + " in sync (master_link_status:up)"
        )
        if fresh:
            # Started after the replicas are in sync, so that a Sentinel's first INFO of the
            # master already lists them (it asks again only every 10 s).
            self._start_sentinels(deadline)
        _proc.wait_until(
            self._sentinels_ready,
            max(1.0, deadline - time.monotonic()),
            "every Sentinel to know the master, its replicas and the other Sentinels, with quorum",
            self._sentinel_detail,
        )
        self.progress(
            f"{SENTINELS} Sentinels agree on master {self.master_name} at "
            f"{HOST}:{self.master().port}; CKQUORUM OK"
        )
        self._load_functions()

    def _load_functions(self) -> None:
        """Install Keygen's function library on the master, as the launcher's own user: on
        the secure topology the service's user may only call it (cluster/security.py)."""
        master = self.master()
        client = master.client()
        try:
            client.function_load(LIBRARY, replace=True)
        finally:
            client.close()
        self.progress(f"function library {LIBRARY_NAME} loaded on {master.name}")

    def _start_sentinels(self, deadline: float) -> None:
        for sentinel in self.sentinels:
            self.progress(f"starting {sentinel.name} on {HOST}:{sentinel.port}")
            sentinel.start(timeout=max(1.0, deadline - time.monotonic()))

    # -- down -----------------------------------------------------------------------------

    def down(self, timeout: float = 30.0) -> list[str]:
        """Stop the recorded processes (Sentinels, then replicas, then the master, then
        PostgreSQL), each only after ``/proc`` confirms it is still ours. Never raises for
        one node: it goes on with the others and reports every outcome."""
        order: list[Node] = [
            *self.sentinels,
            *sorted(
                self.redis_nodes,
                key=lambda n: n.is_running() and not n.is_paused() and n.role() == "master",
            ),
        ]
        if self.postgres is not None:
            order.append(self.postgres)
        report = [_stop_recorded(node, timeout) for node in order]
        self.save_state()
        for line in report:
            self.progress(line)
        return report

    def kill_all(self) -> None:
        """SIGKILL every node whose recorded process still runs (checked as ours): the last
        resort of a test teardown."""
        for node in self.nodes():
            try:
                if node.is_running():
                    node.kill()
            except (ClusterError, OSError):
                pass

    # -- inspection -----------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The environment that points Keygen at this topology (on a secure one, with the
        ``keygen`` user's passwords, TLS, and a ``verify-full`` database URL)."""
        env = {
            "REDIS_SENTINEL_HOSTS": ",".join(f"{HOST}:{s.port}" for s in self.sentinels),
            "REDIS_SENTINEL_MASTER_NAME": self.master_name,
            "REDIS_SENTINEL_QUORUM": str(self.quorum),
        }
        if self.security is not None:
            env.update(self.security.keygen_env())
        if self.postgres is not None:
            env["KEYGEN_DATABASE_URL"] = self.postgres.database_url
        return env

    def status(self) -> ClusterStatus:
        """Each process, its pid, whether it runs, its role, and the Sentinels' master."""
        rows = [status_of(node) for node in self.nodes()]
        address, votes, answering = self.sentinel_master()
        env = {
            key: MASK if key.endswith("_PASSWORD") else redact_url(value)
            for key, value in self.env().items()
        }  # a status is shown and logged: `keygen cluster env` prints the secrets
        return ClusterStatus(str(self.directory), rows, address, votes, answering, env)


def _stop_recorded(node: Node, timeout: float) -> str:
    """Stop ``node`` if its recorded process is still ours (killing it if a clean stop
    fails), and say what happened."""
    recorded = node.pid
    if recorded is None:
        return f"{node.name}: not running"
    try:
        if not node.is_running():
            why = (
                "is now another process; left alone" if _proc.is_alive(recorded) else "not running"
            )
            node.attach(None, None)
            return f"{node.name}: pid {recorded} {why}"
        try:
            node.stop(timeout)
        except (ClusterError, subprocess.TimeoutExpired):
            node.kill()
    except (ClusterError, OSError) as exc:
        return f"{node.name}: could not stop pid {recorded}: {exc}"
    return f"{node.name}: stopped pid {recorded}"
