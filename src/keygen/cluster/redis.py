"""Redis data nodes and Sentinels as local processes, each in a directory of its own.

Both run from ``redis-server`` (a Sentinel is ``redis-server sentinel.conf --sentinel``, so
the ``redis-sentinel`` package is never needed), in the foreground (``daemonize no``) in a
session of their own, so that they outlive the command that started them. Each node's
directory holds its config, pid file, log and (data nodes) the AOF::

    redis.conf | sentinel.conf   written once; Redis and Sentinel rewrite them later
    redis.pid, redis.log         pid file and log
    console.log                  anything printed before the log file is open
    appendonlydir/               the AOF (data nodes)

The config files are written only when a node is created: afterwards they belong to the
servers, because Sentinel rewrites them (``CONFIG REWRITE`` on a data node it reconfigures,
its own state in ``sentinel.conf``). A restart therefore resumes the role the node last had.

A node given a :class:`~keygen.cluster.security.Security` listens with TLS only, has the ACL
users that module describes (``default`` off), and the launcher's own connections
(:meth:`client`) authenticate as ``admin`` with the client certificate. Its directory and
config file are then readable by us alone: the file holds the passwords of its links.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from keygen.cluster import processes as _proc
from keygen.cluster.binaries import ensure_redis_server
from keygen.cluster.layout import (
    DEFAULT_APPENDFSYNC,
    DEFAULT_FAILOVER_TIMEOUT_MS,
    DEFAULT_MASTER_NAME,
    DEFAULT_QUORUM,
    HOST,
)
from keygen.cluster.layout import DEFAULT_DOWN_AFTER_MS as DEFAULT_DOWN_AFTER_MS
from keygen.cluster.security import Security
from keygen.errors import ClusterError
from keygen.progress import Progress, quiet

#: Seconds a control connection (status, readiness) waits on a node: a paused node must not
#: stall `keygen cluster status`.
CONTROL_TIMEOUT = 1.0

RedisResponse = Any


def _pairs(reply: RedisResponse) -> dict[str, str]:
    """A flat ``[key, value, ...]`` reply (RESP2) or a map (RESP3) as a dict of strings."""
    if isinstance(reply, dict):
        return {str(k): str(v) for k, v in reply.items()}
    items = list(reply)
    return {str(items[i]): str(items[i + 1]) for i in range(0, len(items) - 1, 2)}


class _ServerProcess:
    """What data nodes and Sentinels share: config, process, signals, a control client."""

    kind = "redis"
    conf_name = "redis.conf"

    def __init__(
        self,
        directory: Path,
        port: int,
        *,
        name: str,
        binary: Path | None = None,
        progress: Progress = quiet,
        security: Security | None = None,
    ) -> None:
        self.directory = Path(directory).absolute()
        self.port = port
        self.host = HOST
        self.name = name
        self.conf_path = self.directory / self.conf_name
        self.pid_path = self.directory / "redis.pid"
        self.log_path = self.directory / "redis.log"
        self.console_path = self.directory / "console.log"
        self._binary = binary
        self._progress = progress
        self.security = security
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._start_time: int | None = None
        #: Called after each successful start (the cluster records the new pid).
        self.on_start: Callable[[], None] | None = None

    # -- config ---------------------------------------------------------------------------

    def config_lines(self) -> list[str]:
        """The config file's lines, as written when the node is created."""
        listen = (
            [f"port {self.port}"]
            if self.security is None
            else ["port 0", f"tls-port {self.port}", *self.security.tls_lines()]
        )
        return [
            *listen,
            f"bind {self.host}",
            "protected-mode no",
            "daemonize no",
            f'dir "{self.directory}"',
            f'pidfile "{self.pid_path}"',
            f'logfile "{self.log_path}"',
            "loglevel notice",
        ]

    def write_config(self, *, overwrite: bool = False) -> None:
        """Create the directory and the config file (kept as is if it exists, unless
        ``overwrite``: the servers rewrite it and a restart must see their version)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if overwrite or not self.conf_path.exists():
            self.conf_path.write_text("\n".join(self.config_lines()) + "\n")
        if self.security is not None:
            self.directory.chmod(0o700)
            self.conf_path.chmod(0o600)

    @property
    def binary(self) -> Path:
        if self._binary is None:
            self._binary = ensure_redis_server(self._progress)
        return self._binary

    def argv(self) -> list[str]:
        return [str(self.binary), str(self.conf_path)]

    # -- process --------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Start the server (writing its config if there is none) and wait until it answers
        ``PING``."""
        if self.is_running():
            raise ClusterError(f"{self.name} is already running (pid {self._pid})")
        self.write_config()
        self._proc = _proc.spawn(
            self.argv(),
            cwd=self.directory,
            console_log=self.console_path,
            # The config files it rewrites hold passwords: readable by us alone.
            umask=-1 if self.security is None else 0o077,
        )
        self._pid = self._proc.pid
        self._start_time = _proc.start_time(self._pid)
        self.wait_ready(timeout)
        if self.on_start is not None:
            self.on_start()

    def wait_ready(self, timeout: float) -> None:
        """Wait until the server answers ``PING`` (not ``LOADING``)."""

        def ready() -> bool:
            if not self.is_running():
                raise ClusterError(f"{self.name} exited while starting:\n{self.log_tail()}")
            try:
                with self.client() as client:
                    return bool(client.ping())
            except redis.RedisError:
                return False

        _proc.wait_until(ready, timeout, f"{self.name} on port {self.port}", self.log_tail)

    def attach(self, pid: int | None, start_time: int | None) -> None:
        """Adopt a process started elsewhere (another ``keygen`` run), by its identity."""
        self._proc = None
        self._pid = pid
        self._start_time = start_time

    @property
    def pid(self) -> int | None:
        """The recorded pid of the server process (whether or not it still runs)."""
        return self._pid

    def owns(self, pid: int) -> bool:
        """Whether ``pid`` is this node's process: alive, started when we recorded, and a
        ``redis-server`` whose command line names our port or our config file."""
        if self._start_time is not None and _proc.start_time(pid) != self._start_time:
            return False
        if not _proc.is_alive(pid):
            return False
        argv = _proc.cmdline(pid)
        if not argv:
            return False
        title = " ".join(argv)
        # Redis replaces its argv with "redis-server 127.0.0.1:6379" once running.
        return "redis-server" in argv[0] and (
            f":{self.port}" in title or str(self.conf_path) in title
        )

    def is_running(self) -> bool:
        """Whether the recorded process runs (paused counts as running)."""
        if self._proc is not None:
            # Our own child: no need to (and, while Redis rewrites its process title just
            # after starting, better not) look at its command line.
            return self._proc.poll() is None
        return self._pid is not None and self.owns(self._pid)

    def is_paused(self) -> bool:
        return (
            self.is_running() and self._pid is not None and (_proc.process_state(self._pid) == "T")
        )

    def kill(self, sig: int = signal.SIGKILL, *, timeout: float = 30.0) -> None:
        """Send ``sig`` (SIGKILL by default) to the process; for a signal that ends it, wait
        until it has exited."""
        pid = self._running_pid()
        os.kill(pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            if sig != signal.SIGKILL:
                os.kill(pid, signal.SIGCONT)  # a paused process would never handle it
            self.wait_exit(timeout)

    def wait_exit(self, timeout: float) -> None:
        """Wait until the process has exited (reaping it if it is our child)."""
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                raise ClusterError(
                    f"{self.name} (pid {self._pid}) did not exit in {timeout:g}s"
                ) from None
        elif self._pid is not None:
            _proc.wait_gone([self._pid], timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (Redis shuts down cleanly, flushing its AOF), SIGKILL if that takes
        longer than ``timeout``. Nothing happens if it is not running."""
        if not self.is_running():
            return
        try:
            self.kill(signal.SIGTERM, timeout=timeout)
        except ClusterError:
            self.kill(signal.SIGKILL, timeout=timeout)

    def pause(self) -> None:
        """SIGSTOP: the process keeps its connections but answers nothing."""
        _proc.pause_pids([self._running_pid()])

    def resume(self) -> None:
        """SIGCONT."""
        os.kill(self._running_pid(), signal.SIGCONT)

    def restart(self, timeout: float = 30.0) -> None:
        """Stop if running, then start again from the (possibly rewritten) config."""
        self.stop(timeout)
        self.start(timeout)

    def _running_pid(self) -> int:
        if self._pid is None or not self.is_running():
            raise ClusterError(f"{self.name} is not running")
        return self._pid

    # -- talking to it --------------------------------------------------------------------

    def client(self, **options: Any) -> redis.Redis:
        """A redis-py client for this node (strings decoded, short timeouts, no retries; on a
        secure topology as ``admin``, over TLS); ``options`` override the defaults. Close it
        (or use it as a context manager)."""
        defaults: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "decode_responses": True,
            "socket_timeout": CONTROL_TIMEOUT,
            "socket_connect_timeout": CONTROL_TIMEOUT,
            "retry": Retry(NoBackoff(), 0),
        }
        if self.security is not None:
            defaults.update(self.security.client_options(sentinel=self.kind == "sentinel"))
        return redis.Redis(**{**defaults, **options})

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's log (and of anything printed before it was open)."""
        return (_proc.tail(self.console_path, 1000) + _proc.tail(self.log_path, chars)).strip()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, port={self.port}, pid={self._pid})"


class RedisNode(_ServerProcess):
    """A Redis data node: a master, or a replica of ``replicaof`` (a port on 127.0.0.1).

    ``appendonly yes`` always; ``appendfsync`` is ``everysec`` by default (``always`` costs
    an fsync per write). ``replicaof`` only seeds the first config: after that, Sentinel
    decides the roles.
    """

    kind = "redis"

    def __init__(
        self,
        directory: Path,
        port: int,
        *,
        name: str | None = None,
        replicaof: int | None = None,
        appendfsync: str = DEFAULT_APPENDFSYNC,
        binary: Path | None = None,
        progress: Progress = quiet,
        security: Security | None = None,
    ) -> None:
        if appendfsync not in ("always", "everysec", "no"):
            raise ValueError(f"appendfsync must be always, everysec or no, not {appendfsync!r}")
        super().__init__(
            directory,
            port,
            name=name or f"redis-{port}",
            binary=binary,
            progress=progress,
            security=security,
        )
        self.replicaof = replicaof
        self.appendfsync = appendfsync

    def config_lines(self) -> list[str]:
        lines = [
            *super().config_lines(),
            "appendonly yes",
            'appenddirname "appendonlydir"',
            f"appendfsync {self.appendfsync}",
            "replica-read-only yes",
            # Redis waits 5 s by default before a full sync, to batch replicas: here a new or
            # reconfigured replica should catch up at once.
            "repl-diskless-sync-delay 0",
        ]
        if self.security is not None:
            lines += self.security.data_node_lines()
        if self.replicaof is not None:
            lines.append(f"replicaof {self.host} {self.replicaof}")
        return lines

    def info_replication(self) -> dict[str, Any]:
        """``INFO replication`` as a dict."""
        with self.client() as client:
            info: dict[str, Any] = client.info("replication")
            return info

    def role(self) -> str | None:
        """``master`` or ``replica`` per the node itself; None if it does not answer."""
        try:
            role = self.info_replication().get("role")
        except redis.RedisError:
            return None
        return "replica" if role == "slave" else str(role) if role else None

    def in_sync(self, of: int | None = None) -> bool:
        """A replica (of the master on port ``of``, if given) whose link to its master is up
        and not in a full resync."""
        try:
            info = self.info_replication()
        except redis.RedisError:
            return False
        return (
            info.get("role") == "slave"
            and info.get("master_link_status") == "up"
            and not info.get("master_sync_in_progress")
            and (of is None or str(info.get("master_port")) == str(of))
        )

    def describe(self) -> tuple[str | None, str]:
        """``master`` with its replica count, or ``replica`` with its master and link."""
        try:
            info = self.info_replication()
        except redis.RedisError as exc:
            return None, f"no answer ({exc})"
        if info.get("role") == "master":
            return "master", f"{info.get('connected_slaves', 0)} replicas connected"
        link = info.get("master_link_status")
        return "replica", f"of {info.get('master_host')}:{info.get('master_port')}, link {link}"


class SentinelNode(_ServerProcess):
    """A Sentinel monitoring ``master_name`` at ``127.0.0.1:master_port``.

    Sentinel rewrites its config file with what it learns (replicas, other Sentinels, the
    current master, epochs), so each Sentinel has its own file in its own directory.
    """

    kind = "sentinel"
    conf_name = "sentinel.conf"

    def __init__(
        self,
        directory: Path,
        port: int,
        *,
        master_port: int,
        name: str | None = None,
        master_name: str = DEFAULT_MASTER_NAME,
        quorum: int = DEFAULT_QUORUM,
        down_after_ms: int = DEFAULT_DOWN_AFTER_MS,
        failover_timeout_ms: int = DEFAULT_FAILOVER_TIMEOUT_MS,
        parallel_syncs: int = 1,
        binary: Path | None = None,
        progress: Progress = quiet,
        security: Security | None = None,
    ) -> None:
        super().__init__(
            directory,
            port,
            name=name or f"sentinel-{port}",
            binary=binary,
            progress=progress,
            security=security,
        )
        self.master_port = master_port
        self.master_name = master_name
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.parallel_syncs = parallel_syncs

    def monitor_lines(self) -> list[str]:
        """The ``sentinel ...`` lines for the monitored master (``monitor`` comes first)."""
        name = self.master_name
        return [
            f"sentinel monitor {name} {self.host} {self.master_port} {self.quorum}",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} {self.parallel_syncs}",
            *(self.security.monitor_lines(name) if self.security is not None else []),
        ]

    def config_lines(self) -> list[str]:
        return [
            *super().config_lines(),
            *(self.security.sentinel_lines() if self.security is not None else []),
            "sentinel resolve-hostnames no",
            f"sentinel announce-ip {self.host}",
            *self.monitor_lines(),
        ]

    def argv(self) -> list[str]:
        return [str(self.binary), str(self.conf_path), "--sentinel"]

    def owns(self, pid: int) -> bool:
        return super().owns(pid) and (
            "sentinel" in " ".join(_proc.cmdline(pid)) or "--sentinel" in _proc.cmdline(pid)
        )

    def master_state(self) -> dict[str, str]:
        """``SENTINEL MASTER <name>``: flags, address, num-slaves, num-other-sentinels..."""
        with self.client() as client:
            return _pairs(client.execute_command("SENTINEL", "MASTER", self.master_name))

    def master_address(self) -> tuple[str, int] | None:
        """``SENTINEL GET-MASTER-ADDR-BY-NAME``; None if it does not answer."""
        try:
            with self.client() as client:
                reply = client.execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name
                )
        except redis.RedisError:
            return None
        if not reply:
            return None
        host, port = reply
        return str(host), int(port)

    def describe(self) -> tuple[str | None, str]:
        """``sentinel``, and the master it names."""
        address = self.master_address()
        return "sentinel", f"master at {address[0]}:{address[1]}" if address else "no answer"

    def ckquorum(self) -> bool:
        """``SENTINEL CKQUORUM``: enough Sentinels are reachable to authorise a failover."""
        try:
            with self.client() as client:
                client.execute_command("SENTINEL", "CKQUORUM", self.master_name)
        except redis.RedisError:
            return False
        return True

    def failover(self) -> None:
        """``SENTINEL FAILOVER``: force a failover now, without agreement from the others."""
        with self.client() as client:
            client.execute_command("SENTINEL", "FAILOVER", self.master_name)
