"""A private PostgreSQL for the suite: ``initdb`` in a temp dir, a free port, 127.0.0.1 only.

PostgreSQL refuses to run as root, so when we are root every server command runs as the
``postgres`` user (``runuser -u postgres --``) in a directory it owns. The server runs with
``fsync=on`` (the crash tests are meaningless without it) and is removed after the session.

``KEYGEN_TEST_DATABASE_URL`` points the suite at an existing server instead; tests that must
stop or crash the server are then skipped, because they cannot control it.
"""

from __future__ import annotations

import asyncio
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tests.support.processes import free_port

TEST_DATABASE_URL_ENV = "KEYGEN_TEST_DATABASE_URL"

#: Server settings for the private cluster: durable, local, quiet, quick to recover.
SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "max_connections": "200",
    "shared_buffers": "64MB",
    "log_min_messages": "warning",
    "log_checkpoints": "off",
}


# Runs beside the test process: when that process is gone (its end of the pipe closes, even
# after SIGKILL), stop the server and delete its files, so no session leaks a server.
_WATCHDOG = """
import shutil, subprocess, sys
sys.stdin.buffer.read()
subprocess.run(sys.argv[1:-1], capture_output=True, timeout=120)
shutil.rmtree(sys.argv[-1], ignore_errors=True)
"""


def find_bin_dir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: on PATH, else the newest Debian one."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(os.path.realpath(found)).parent
    candidates = glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path))

    for path in sorted(candidates, key=version, reverse=True):
        if Path(path).with_name("initdb").exists():
            return Path(path).parent
    return None


def _as_server_user(argv: Sequence[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return list(argv)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed, not yet reaped) still counts: PostgreSQL's lock-file check sees it.
    return True


def wait_pids_gone(pids: Sequence[int], timeout: float = 30.0) -> None:
    """Wait until none of ``pids`` is running (a restart is refused before that)."""
    deadline = time.monotonic() + timeout
    while any(_pid_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"PostgreSQL processes {list(pids)} still running")
        time.sleep(0.02)


def _children(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def with_database(url: str, database: str) -> str:
    """``url`` with its database name replaced."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


class PostgresServer:
    """One PostgreSQL server the suite uses: private (controllable) or external."""

    def __init__(self, url: str, *, data_dir: Path | None = None, bin_dir: Path | None = None,
                 port: int | None = None, base_dir: Path | None = None) -> None:
        self.url = url
        self.data_dir = data_dir
        self.bin_dir = bin_dir
        self.port = port
        self.base_dir = base_dir
        self._databases = 0
        self._watchdog: subprocess.Popen[bytes] | None = None

    @property
    def controllable(self) -> bool:
        """Whether this suite may stop, crash and restart the server."""
        return self.data_dir is not None

    # -- life cycle of a private server -------------------------------------------------

    @classmethod
    def private(cls) -> PostgresServer:
        """``initdb`` a fresh cluster in a temp dir and start it on a free port."""
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise RuntimeError(
                "PostgreSQL server binaries (initdb, pg_ctl) not found; run scripts/install "
                f"or set {TEST_DATABASE_URL_ENV}"
            )
        base = Path(tempfile.mkdtemp(prefix="keygen-pg-"))
        if os.geteuid() == 0:
            shutil.chown(base, "postgres", "postgres")
        data_dir = base / "data"
        subprocess.run(
            _as_server_user([
                str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres",
                "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync",
            ]),
            check=True, capture_output=True, cwd=base,
        )
        port = free_port()
        server = cls(
            f"postgresql://postgres@127.0.0.1:{port}/postgres",
            data_dir=data_dir, bin_dir=bin_dir, port=port, base_dir=base,
        )
        stop = _as_server_user(
            [str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-m", "immediate", "-w", "stop"]
        )
        server._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, *stop, str(base)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # outlives a killed test process
        )
        server.start()
        return server

    @classmethod
    def external(cls, url: str) -> PostgresServer:
        return cls(url)

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        assert self.bin_dir is not None and self.data_dir is not None
        return subprocess.run(
            _as_server_user([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args]),
            check=check, capture_output=True, cwd=self.base_dir, timeout=60,
        )

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._require_control()
        assert self.base_dir is not None
        options = " ".join(f"-c {key}={value}" for key, value in SERVER_SETTINGS.items())
        options += f" -p {self.port} -c unix_socket_directories={self.base_dir}"
        result = self._pg_ctl(
            "-w", "-t", "60", "-l", str(self.base_dir / "server.log"), "-o", options, "start",
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"pg_ctl start failed: {result.stdout.decode()}{result.stderr.decode()}\n"
                f"{self.log_tail()}"
            )

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m mode`` (``immediate`` is a crash: no checkpoint, WAL replay on
        restart); waits until every server process is gone."""
        self._require_control()
        pids = self.pids()
        self._pg_ctl("-w", "-m", mode, "stop", check=False)
        wait_pids_gone(pids)

    def kill(self) -> None:
        """SIGKILL the postmaster and all its processes at once: whatever only the server's
        memory held (WAL buffers included) is lost, as in a crash. ``start`` recovers."""
        self._require_control()
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_pids_gone(pids)

    def pause(self) -> None:
        """SIGSTOP every server process: connections stay open but nothing answers, as in a
        network partition or a stalled disk."""
        self._signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_all(signal.SIGCONT)

    def _signal_all(self, sig: signal.Signals) -> None:
        self._require_control()
        for pid in self.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def is_running(self) -> bool:
        return bool(self.postmaster_pid())

    def ensure_running(self) -> None:
        if self.controllable:
            self.resume()
            if not self.is_running():
                self.start()

    def postmaster_pid(self) -> int | None:
        assert self.data_dir is not None
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _pid_alive(pid) else None

    def pids(self) -> list[int]:
        """The postmaster and its children."""
        pid = self.postmaster_pid()
        return [] if pid is None else [pid, *_children(pid)]

    def destroy(self) -> None:
        """Stop the server (if ours) and delete its files."""
        if not self.controllable:
            return
        self.resume()
        if self.is_running():
            self.stop("immediate")
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        if self._watchdog is not None:
            assert self._watchdog.stdin is not None
            self._watchdog.stdin.close()  # nothing left for it to do: it exits
            self._watchdog.wait(timeout=120)
            self._watchdog = None

    def log_tail(self, chars: int = 3000) -> str:
        if self.base_dir is None:
            return ""
        try:
            return (self.base_dir / "server.log").read_text()[-chars:]
        except OSError:
            return ""

    def _require_control(self) -> None:
        if not self.controllable:
            raise RuntimeError("this PostgreSQL is external; the suite cannot control it")

    # -- databases --------------------------------------------------------------------------

    def create_database(self, prefix: str = "keygen_test", *, name: str | None = None) -> str:
        """Create a fresh, empty database (replacing one of that ``name``); return its URL."""
        self._databases += 1
        name = name or f"{prefix}_{os.getpid()}_{self._databases}"
        asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{name}"', f'CREATE DATABASE "{name}"'))
        return with_database(self.url, name)

    def drop_database(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    async def _admin(self, *statements: str) -> None:
        conn = await asyncpg.connect(self.url, timeout=10)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()
