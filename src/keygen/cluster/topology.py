"""The local topology: a Redis master, 2 replicas, 3 Sentinels and a PostgreSQL ledger.

``LocalCluster(directory).up()`` starts them all on 127.0.0.1, waits until the replicas are
in sync, every Sentinel knows the master, both replicas and both other Sentinels and
``SENTINEL CKQUORUM`` passes, and PostgreSQL accepts connections; then it records every pid
and port in ``cluster.json``. ``LocalCluster.load(directory)`` reattaches to it from another
process; ``down()`` stops exactly the recorded processes, each checked through ``/proc``
(start time and command line) before it is signalled.

Ports, from a base port B (6379 gives the seed's 6379-6381 / 26379-26381)::

    Redis        B, B+1, B+2            (B is the first master)
    Sentinels    B+20000, B+20001, B+20002
    PostgreSQL   B+3

With no base port, every port is a free one picked at random (what tests use).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

from keygen.cluster import processes as _proc
from keygen.cluster.binaries import ensure_postgres_bin_dir, ensure_redis_server
from keygen.cluster.postgres import PostgresNode
from keygen.cluster.redis import (
    DEFAULT_APPENDFSYNC,
    DEFAULT_DOWN_AFTER_MS,
    DEFAULT_FAILOVER_TIMEOUT_MS,
    DEFAULT_MASTER_NAME,
    DEFAULT_QUORUM,
    RedisNode,
    SentinelNode,
)
from keygen.cluster.status import ClusterStatus, Node, status_of
from keygen.errors import ClusterError
from keygen.progress import Progress, quiet

STATE_FILE = "cluster.json"
STATE_VERSION = 1
DEFAULT_BASE_PORT = 6379
SENTINEL_PORT_OFFSET = 20000
POSTGRES_PORT_OFFSET = 3
REDIS_NODES = 3
SENTINELS = 3
#: Seconds between looks while waiting out a failover or a resync. Each look opens a
#: connection to every Sentinel or node: polled 20 times a second it took a tenth of the CPU
#: of a chaos run's load generator, in the same process.
FAULT_POLL_INTERVAL = 0.2
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Ports:
    """Every port the topology listens on."""

    redis: tuple[int, ...]
    sentinels: tuple[int, ...]
    postgres: int | None

    @classmethod
    def from_base(cls, base: int, *, with_postgres: bool = True) -> Ports:
        """The documented scheme: Redis B..B+2, Sentinels B+20000.., PostgreSQL B+3."""
        if not 1024 <= base <= 65535 - SENTINEL_PORT_OFFSET - SENTINELS:
            raise ClusterError(
                f"base port {base} out of range: 1024..{65535 - SENTINEL_PORT_OFFSET - SENTINELS}"
            )
        return cls(
            redis=tuple(base + i for i in range(REDIS_NODES)),
            sentinels=tuple(base + SENTINEL_PORT_OFFSET + i for i in range(SENTINELS)),
            postgres=base + POSTGRES_PORT_OFFSET if with_postgres else None,
        )

    @classmethod
    def free(cls, *, with_postgres: bool = True) -> Ports:
        """Free ports picked by the kernel (no pairing between Redis and Sentinel ports)."""
        ports = _proc.free_ports(REDIS_NODES + SENTINELS + 1)
        return cls(
            redis=tuple(ports[:REDIS_NODES]),
            sentinels=tuple(ports[REDIS_NODES:REDIS_NODES + SENTINELS]),
            postgres=ports[-1] if with_postgres else None,
        )

    def all(self) -> list[int]:
        return [*self.redis, *self.sentinels, *([self.postgres] if self.postgres else [])]

    def busy(self) -> list[int]:
        """The ports something already listens on."""
        return [port for port in self.all() if _proc.port_in_use(port)]


class LocalCluster:
    """The topology in ``directory``: built from arguments, or reattached with :meth:`load`.

    Args:
        directory: where every node's files and ``cluster.json`` live.
        base_port: the port scheme's base (see the module docstring); None picks free ports.
        down_after_ms: Sentinel's ``down-after-milliseconds`` (the seed's 5 s by default).
        master_name: the name the Sentinels monitor.
        quorum: Sentinels that must agree the master is down.
        with_postgres: also run the PostgreSQL ledger.
        failover_timeout_ms: Sentinel's ``failover-timeout``.
        appendfsync: the data nodes' AOF fsync policy.
        progress: called with a line of text at each step.
    """

    def __init__(
        self, directory: Path | str, base_port: int | None = None,
        down_after_ms: int = DEFAULT_DOWN_AFTER_MS, master_name: str = DEFAULT_MASTER_NAME,
        quorum: int = DEFAULT_QUORUM, with_postgres: bool = True, *,
        failover_timeout_ms: int = DEFAULT_FAILOVER_TIMEOUT_MS,
        appendfsync: str = DEFAULT_APPENDFSYNC, progress: Progress | None = None,
        ports: Ports | None = None,
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
            ports = (Ports.free(with_postgres=with_postgres) if base_port is None
                     else Ports.from_base(base_port, with_postgres=with_postgres))
        self.ports = ports
        say = self.progress
        first = ports.redis[0]
        self.redis_nodes = [
            RedisNode(self.directory / f"redis-{i + 1}", port, name=f"redis-{i + 1}",
                      replicaof=None if i == 0 else first, appendfsync=appendfsync,
                      progress=say)
            for i, port in enumerate(ports.redis)
        ]
        self.sentinels = [
            SentinelNode(self.directory / f"sentinel-{i + 1}", port, name=f"sentinel-{i + 1}",
                         master_port=first, master_name=master_name, quorum=quorum,
                         down_after_ms=down_after_ms, failover_timeout_ms=failover_timeout_ms,
                         progress=say)
            for i, port in enumerate(ports.sentinels)
        ]
        self.postgres: PostgresNode | None = (
            PostgresNode(self.directory / "postgres", ports.postgres, progress=say)
            if ports.postgres is not None else None
        )
        self._state_lock = threading.Lock()
        for node in self.nodes():
            node.on_start = self.save_state  # keeps cluster.json current across restarts

    # -- state file -----------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.directory / STATE_FILE

    def nodes(self) -> Iterator[Node]:
        """Every node: Redis, Sentinels, then PostgreSQL."""
        yield from self.redis_nodes
        yield from self.sentinels
        if self.postgres is not None:
            yield self.postgres

    def save_state(self) -> None:
        """Write ``cluster.json`` (atomically): the settings, and each node's port and pid."""
        processes = []
        for node in self.nodes():
            pid = node.pid if node.is_running() else None
            processes.append({
                "name": node.name, "kind": node.kind, "port": node.port,
                "dir": node.directory.name, "pid": pid,
                "start_time": _proc.start_time(pid) if pid else None,
            })
        state = {
            "version": STATE_VERSION, "updated_at": time.time(),
            "master_name": self.master_name, "quorum": self.quorum,
            "down_after_ms": self.down_after_ms, "failover_timeout_ms": self.failover_timeout_ms,
            "appendfsync": self.appendfsync, "base_port": self.base_port,
            "ports": asdict(self.ports), "processes": processes,
        }
        with self._state_lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self.state_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(state, indent=2) + "\n")
            os.replace(tmp, self.state_path)

    @classmethod
    def load(cls, directory: Path | str, progress: Progress | None = None) -> LocalCluster:
        """Reattach to the topology recorded in ``directory/cluster.json``."""
        path = Path(directory).absolute() / STATE_FILE
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            raise ClusterError(f"no cluster recorded in {path.parent} (no {STATE_FILE})") from None
        except (OSError, ValueError) as exc:
            raise ClusterError(f"cannot read {path}: {exc}") from exc
        if state.get("version") != STATE_VERSION:
            raise ClusterError(f"{path}: unknown state version {state.get('version')!r}")
        recorded = state["ports"]
        ports = Ports(redis=tuple(recorded["redis"]), sentinels=tuple(recorded["sentinels"]),
                      postgres=recorded["postgres"])
        cluster = cls(
            path.parent, state.get("base_port"), state["down_after_ms"], state["master_name"],
            state["quorum"], ports.postgres is not None,
            failover_timeout_ms=state["failover_timeout_ms"], appendfsync=state["appendfsync"],
            progress=progress, ports=ports,
        )
        by_name = {p["name"]: p for p in state["processes"]}
        for node in [*cluster.redis_nodes, *cluster.sentinels]:
            entry = by_name.get(node.name, {})
            node.attach(entry.get("pid"), entry.get("start_time"))
        return cluster

    @staticmethod
    def exists(directory: Path | str) -> bool:
        """Whether ``directory`` holds a recorded cluster."""
        return (Path(directory) / STATE_FILE).exists()

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
        fresh = not self.state_path.exists()
        self.directory.mkdir(parents=True, exist_ok=True)
        ensure_redis_server(self.progress)
        if self.postgres is not None:
            ensure_postgres_bin_dir(self.progress)
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
        self.progress(f"{node.name} accepts connections: {node.database_url}")

    def _start_redis(self, deadline: float, *, fresh: bool) -> None:
        for node in self.redis_nodes:
            self.progress(f"starting {node.name} (appendonly) on {HOST}:{node.port}")
            node.start(timeout=max(1.0, deadline - time.monotonic()))
        if not fresh:
            # A restart: the Sentinels' files name the current master, and a node that was
            # down through a failover still believes it is master until they demote it.
            self._start_sentinels(deadline)
            self.progress("waiting for the Sentinels to settle the roles")
        _proc.wait_until(self._replication_ready, max(1.0, deadline - time.monotonic()),
                         "the replicas to be in sync with the master", self._replication_detail)
        roles = {node.name: node.role() for node in self.redis_nodes}
        self.progress("replication ready: master "
                      + ", ".join(n for n, r in roles.items() if r == "master") + "; replicas "
                      + ", ".join(n for n, r in roles.items() if r == "replica")
                      + " in sync (master_link_status:up)")
        if fresh:
            # Started after the replicas are in sync, so that a Sentinel's first INFO of the
            # master already lists them (it asks again only every 10 s).
            self._start_sentinels(deadline)
        _proc.wait_until(self._sentinels_ready, max(1.0, deadline - time.monotonic()),
                         "every Sentinel to know the master, its replicas and the other "
                         "Sentinels, with quorum", self._sentinel_detail)
        self.progress(f"{SENTINELS} Sentinels agree on master {self.master_name} at "
                      f"{HOST}:{self.master().port}; CKQUORUM OK")

    def _start_sentinels(self, deadline: float) -> None:
        for sentinel in self.sentinels:
            self.progress(f"starting {sentinel.name} on {HOST}:{sentinel.port}")
            sentinel.start(timeout=max(1.0, deadline - time.monotonic()))

    def _replication_ready(self) -> bool:
        try:
            infos = [node.info_replication() for node in self.redis_nodes]
        except redis.RedisError:
            return False
        masters = [n for n, info in zip(self.redis_nodes, infos, strict=True)
                   if info.get("role") == "master"]
        if len(masters) != 1:
            return False
        return all(
            info.get("master_port") == masters[0].port and info.get("master_link_status") == "up"
            and not info.get("master_sync_in_progress")
            for node, info in zip(self.redis_nodes, infos, strict=True) if node is not masters[0]
        )

    def _replication_detail(self) -> str:
        return "\n".join(f"{n.name}: role={n.role()} in_sync={n.in_sync()}\n{n.log_tail(800)}"
                         for n in self.redis_nodes)

    def _sentinels_ready(self) -> bool:
        replicas, others = len(self.redis_nodes) - 1, len(self.sentinels) - 1
        master_port: int | None = None
        for sentinel in self.sentinels:
            try:
                state = sentinel.master_state()
            except redis.RedisError:
                return False
            port = int(state.get("port", 0))
            if master_port is None:
                master_port = port
            if (port != master_port or state.get("flags") != "master"
                    or int(state.get("num-slaves", 0)) != replicas
                    or int(state.get("num-other-sentinels", 0)) != others
                    or not sentinel.ckquorum()):
                return False
        return True

    def _sentinel_detail(self) -> str:
        lines = []
        for sentinel in self.sentinels:
            try:
                lines.append(f"{sentinel.name}: {sentinel.master_state()}")
            except redis.RedisError as exc:
                lines.append(f"{sentinel.name}: {exc}\n{sentinel.log_tail(800)}")
        return "\n".join(lines)

    # -- down -----------------------------------------------------------------------------

    def down(self, timeout: float = 30.0) -> list[str]:
        """Stop the recorded processes (Sentinels, then replicas, then the master, then
        PostgreSQL), each only after ``/proc`` confirms it is still ours. Never raises for
        one node: it goes on with the others and reports every outcome."""
        report = []
        order: list[Node] = [*self.sentinels, *sorted(
            self.redis_nodes, key=lambda n: n.is_running() and not n.is_paused()
            and n.role() == "master")]
        if self.postgres is not None:
            order.append(self.postgres)
        for node in order:
            recorded = node.pid
            try:
                if isinstance(node, PostgresNode):
                    recorded = node.pid
                    if recorded is None:
                        report.append(f"{node.name}: not running")
                        continue
                    try:
                        node.stop("fast", timeout)
                    except (ClusterError, subprocess.TimeoutExpired):
                        node.kill()
                elif recorded is None:
                    report.append(f"{node.name}: not running")
                    continue
                elif not node.is_running():
                    why = ("is now another process; left alone" if _proc.is_alive(recorded)
                           else "not running")
                    report.append(f"{node.name}: pid {recorded} {why}")
                    node.attach(None, None)
                    continue
                else:
                    node.stop(timeout)
                report.append(f"{node.name}: stopped pid {recorded}")
            except (ClusterError, OSError) as exc:
                report.append(f"{node.name}: could not stop pid {recorded}: {exc}")
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
        """The environment that points Keygen at this topology."""
        env = {
            "REDIS_SENTINEL_HOSTS": ",".join(f"{HOST}:{s.port}" for s in self.sentinels),
            "REDIS_SENTINEL_MASTER_NAME": self.master_name,
            "REDIS_SENTINEL_QUORUM": str(self.quorum),
        }
        if self.postgres is not None:
            env["KEYGEN_DATABASE_URL"] = self.postgres.database_url
        return env

    def sentinel_master(self) -> tuple[tuple[str, int] | None, int, int]:
        """The master named by most answering Sentinels: (address, votes, answering)."""
        answers = [s.master_address() for s in self.sentinels if s.is_running()
                   and not s.is_paused()]
        named = Counter(a for a in answers if a is not None)
        if not named:
            return None, 0, 0
        address, votes = named.most_common(1)[0]
        return address, votes, sum(named.values())

    def master(self) -> RedisNode:
        """The data node that is master now, per the Sentinels."""
        address, _, _ = self.sentinel_master()
        if address is None:
            raise ClusterError("no Sentinel answers")
        return self.node_at(address[1])

    def node_at(self, port: int) -> RedisNode:
        for node in self.redis_nodes:
            if node.port == port:
                return node
        raise ClusterError(f"no data node of this cluster listens on port {port}")

    def replicas(self) -> list[RedisNode]:
        """The data nodes that report themselves as replicas now."""
        return [n for n in self.redis_nodes if n.role() == "replica"]

    def wait_for_failover(self, old_master: RedisNode, timeout: float = 30.0) -> RedisNode:
        """Wait until every running Sentinel names the same master, not ``old_master``, and
        that node reports role master; return it."""
        found: list[RedisNode] = []

        def promoted() -> bool:
            answers = {s.master_address() for s in self.sentinels
                       if s.is_running() and not s.is_paused()}
            if len(answers) != 1 or None in answers:
                return False
            (address,) = answers
            if address is None or address[1] == old_master.port:
                return False
            node = self.node_at(address[1])
            if node.role() != "master":
                return False
            found[:] = [node]
            return True

        _proc.wait_until(promoted, timeout, f"a failover away from {old_master.name}",
                         self._sentinel_detail, interval=FAULT_POLL_INTERVAL)
        return found[0]

    def wait_in_sync(self, timeout: float = 30.0) -> None:
        """Wait until every running data node other than the master is an in-sync replica
        of it."""
        def synced() -> bool:
            try:
                master = self.master()
            except ClusterError:
                return False
            return all(n.in_sync(of=master.port)
                       for n in self.redis_nodes if n is not master and n.is_running())

        _proc.wait_until(synced, timeout, "the replicas to be in sync", self._replication_detail,
                         interval=FAULT_POLL_INTERVAL)

    def wait_sentinels_ready(self, timeout: float = 30.0) -> None:
        """Wait until every Sentinel names the same master, sees all its replicas and the
        other Sentinels, and has its quorum (a restarted one learns of failovers it missed)."""
        _proc.wait_until(self._sentinels_ready, timeout, "the Sentinels to agree",
                         self._sentinel_detail, interval=FAULT_POLL_INTERVAL)

    def status(self) -> ClusterStatus:
        """Each process, its pid, whether it runs, its role, and the Sentinels' master."""
        rows = [status_of(node) for node in self.nodes()]
        address, votes, answering = self.sentinel_master()
        return ClusterStatus(str(self.directory), rows, address, votes, answering, self.env())
