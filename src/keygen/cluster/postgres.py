"""A private PostgreSQL server in a directory of its own, on 127.0.0.1.

PostgreSQL refuses to run as root, so when we are root every server command runs as the
``postgres`` user (``runuser -u postgres --``) and the node's directory is handed to that
user. The server runs with ``fsync=on`` and ``synchronous_commit=on``: the ledger's crash
safety rests on them. Clients connect over TCP with ``trust`` authentication, which is why
the server listens on 127.0.0.1 only.

A node given a :class:`~keygen.cluster.security.Security` is the secure one instead: TLS
only (``pg_hba.conf`` has a single ``hostssl`` line: SCRAM passwords and a client
certificate signed by the topology's CA, nothing for unencrypted connections), a superuser
password, and a ``keygen`` role that owns :attr:`~PostgresNode.database` and is what
:attr:`~PostgresNode.database_url` names. The server's certificate and key are copied into
the data dir, owned by the server's user (PostgreSQL refuses a key others can read).

Layout of the node's directory::

    data/        the cluster (initdb), with our settings appended to postgresql.conf
    server.log   the server's log
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

from keygen.cluster import processes as _proc
from keygen.cluster.binaries import ensure_postgres_bin_dir
from keygen.cluster.layout import HOST
from keygen.cluster.security import KEYGEN_USER, Security
from keygen.errors import ClusterError
from keygen.progress import Progress, quiet

#: The server's OS user when we are root, and the database superuser.
SERVER_USER = "postgres"
#: The database Keygen's ledger lives in.
DEFAULT_DATABASE = "keygen"
#: pg_ctl's stop modes: ``smart`` waits for clients, ``fast`` disconnects them,
#: ``immediate`` is a crash (no checkpoint; WAL replay on the next start).
STOP_MODES = ("smart", "fast", "immediate")

#: Server settings: durable, local only, quiet, quick to recover.
SERVER_SETTINGS: Mapping[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",  # TCP only: no socket path-length limits, no /var/run
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "max_connections": "200",
    "shared_buffers": "64MB",
    "log_min_messages": "warning",
    "log_checkpoints": "off",
}

#: What a secure node adds (the files are copied into the data dir by ``init``).
SECURE_SETTINGS: Mapping[str, str] = {
    "ssl": "on",
    "ssl_cert_file": "'server.crt'",
    "ssl_key_file": "'server.key'",
    "ssl_ca_file": "'root.crt'",
    "password_encryption": "'scram-sha-256'",
}
#: A secure node's whole pg_hba.conf: TLS, a password and a certificate, from loopback only.
SECURE_HBA = (
    "# Keygen local topology (secure): TLS only, SCRAM passwords, client certificates\n"
    "hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-ca\n"
)

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def with_database(url: str, database: str) -> str:
    """``url`` with its database name replaced."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def with_address(url: str, address: str) -> str:
    """``url`` with its ``host:port`` replaced (its user, password and query kept)."""
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{address}"))


class PostgresNode:
    """One PostgreSQL server: ``initdb`` / start / stop / kill / pause / resume.

    Args:
        directory: the node's own directory (created; handed to ``postgres`` when root).
        port: TCP port on 127.0.0.1.
        bin_dir: where ``initdb``/``pg_ctl`` live; found (or installed) when None.
        database: the database :attr:`database_url` names, created by :meth:`start`
            (None: just the ``postgres`` maintenance database).
        name: how status reports and errors call this node.
    """

    kind = "postgres"

    def __init__(
        self,
        directory: Path,
        port: int,
        *,
        bin_dir: Path | None = None,
        database: str | None = DEFAULT_DATABASE,
        name: str = "postgres",
        progress: Progress = quiet,
        security: Security | None = None,
    ) -> None:
        if database is not None and not _IDENTIFIER.match(database):
            raise ValueError(f"database name {database!r} is not a plain identifier")
        self.directory = Path(directory).absolute()
        self.data_dir = self.directory / "data"
        self.log_path = self.directory / "server.log"
        self.port = port
        self.host = HOST
        self.database = database
        self.name = name
        self._bin_dir = bin_dir
        self._progress = progress
        self.security = security
        self._databases = 0
        #: Processes we killed: a restart waits until the kernel has reaped them all.
        self._killed: list[int] = []
        #: Called after each successful start (the cluster records the new pid).
        self.on_start: Callable[[], None] | None = None

    # -- addresses ------------------------------------------------------------------------

    def _url(self, user: str, password: str | None, database: str) -> str:
        where = f"{self.host}:{self.port}/{database}"
        if password is None or self.security is None:
            return f"postgresql://{user}@{where}"
        query = urlencode(self.security.libpq_params(), safe="/")
        return f"postgresql://{user}:{password}@{where}?{query}"

    @property
    def url(self) -> str:
        """The superuser's URL for the ``postgres`` maintenance database (on a secure node
        with its password, ``sslmode=verify-full`` and the certificates)."""
        password = self.security.credentials.postgres_admin if self.security else None
        return self._url(SERVER_USER, password, "postgres")

    @property
    def database_url(self) -> str:
        """The URL of :attr:`database` (``KEYGEN_DATABASE_URL``): the superuser's, or on a
        secure node the ``keygen`` role's."""
        if self.database is None:
            return self.url
        if self.security is None:
            return with_database(self.url, self.database)
        return self._url(KEYGEN_USER, self.security.credentials.postgres_keygen, self.database)

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = ensure_postgres_bin_dir(self._progress)
        return self._bin_dir

    # -- life cycle -----------------------------------------------------------------------

    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        """``initdb`` the cluster unless it exists, with our settings appended."""
        if self.initialized:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        user = self._server_user()
        if user:
            shutil.chown(self.directory, user, user)
            self._check_reachable(user)
        auth = ["--auth=trust"]
        pwfile = self.directory / "initdb.pw"
        if self.security is not None:
            self._private_file(pwfile, self.security.credentials.postgres_admin.encode())
            auth = ["--auth=scram-sha-256", f"--pwfile={pwfile}"]
        try:
            self._run(
                [
                    str(self.bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    SERVER_USER,
                    *auth,
                    "-E",
                    "UTF8",
                    "--locale=C",
                ],
                what="initdb",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        settings = dict(SERVER_SETTINGS)
        if self.security is not None:
            settings.update(SECURE_SETTINGS)
            certs = self.security.certs
            for source, target in (
                (certs.server_cert, "server.crt"),
                (certs.server_key, "server.key"),
                (certs.ca, "root.crt"),
            ):
                self._private_file(self.data_dir / target, source.read_bytes())
            self._private_file(self.data_dir / "pg_hba.conf", SECURE_HBA.encode())
        lines = "".join(f"{key} = {value}\n" for key, value in settings.items())
        conf = self.data_dir / "postgresql.conf"
        with conf.open("a") as fh:
            fh.write(f"\n# Keygen local topology\nport = {self.port}\n{lines}")

    def _private_file(self, path: Path, content: bytes) -> None:
        """Write ``path`` 0600, owned by the server's user."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        os.chmod(path, 0o600)
        if user := self._server_user():
            shutil.chown(path, user, user)

    def start(self, timeout: float = 60.0) -> None:
        """``initdb`` if needed, start the server, wait until it accepts connections and
        create :attr:`database` if it does not exist."""
        if self.is_running():
            raise ClusterError(f"{self.name} is already running (pid {self.postmaster_pid()})")
        self.init()
        # A killed postmaster's pid file survives it; PostgreSQL refuses to start while that
        # pid (or any of its old backends) still exists, even as an unreaped zombie.
        stale = [*self._killed, *([p] if (p := self._pid_file_pid()) else [])]
        _proc.wait_gone(stale, timeout, zombies_count=True)
        self._killed = []
        result = self._pg_ctl(
            "-w",
            "-t",
            str(max(1, int(timeout))),
            "-l",
            str(self.log_path),
            "-o",
            f"-p {self.port}",
            "start",
            timeout=timeout + 5,
        )
        if result.returncode != 0:
            raise ClusterError(
                f"{self.name}: pg_ctl start failed: {result.stdout}{result.stderr}\n"
                f"{self.log_tail()}"
            )
        _proc.wait_until(
            self.accepts_connections, timeout, f"{self.name} to accept connections", self.log_tail
        )
        if self.database is not None:
            self.create_database(self.database)
            if self.security is not None:
                self._keygen_role(self.database, self.security.credentials.postgres_keygen)
        if self.on_start is not None:
            self.on_start()

    def stop(self, timeout: float = 60.0, *, mode: str = "fast") -> None:
        """``pg_ctl stop -m mode`` and wait until every server process is gone (reaped)."""
        if mode not in STOP_MODES:
            raise ValueError(f"mode must be one of {STOP_MODES}, not {mode!r}")
        pids = self.pids()
        if not pids:
            return
        self.resume()  # a paused server would never answer the stop request
        self._pg_ctl("-w", "-t", str(max(1, int(timeout))), "-m", mode, "stop", timeout=timeout + 5)
        _proc.wait_gone(pids, timeout, zombies_count=True)

    def kill(self, timeout: float = 30.0) -> None:
        """SIGKILL the postmaster and all its processes at once, as a machine crash would;
        return once every one of them is gone."""
        pids = self.pids()
        _proc.signal_pids(pids, signal.SIGKILL)
        self._killed.extend(pids)
        _proc.wait_gone(pids, timeout, zombies_count=True)

    def attach(self, pid: int | None, start_time: int | None) -> None:
        """Nothing to adopt: the postmaster's own pid file, checked through ``/proc``, names
        the running server."""

    def pause(self) -> None:
        """SIGSTOP every server process: connections stay open but nothing answers."""
        _proc.pause_pids(self.pids())

    def resume(self) -> None:
        """SIGCONT every server process."""
        _proc.signal_pids(self.pids(), signal.SIGCONT)

    def ensure_running(self, timeout: float = 60.0) -> None:
        """Resume the server if paused, start it if stopped (a test's clean-up)."""
        self.resume()
        if not self.is_running():
            self.start(timeout)

    def restart(self, timeout: float = 60.0) -> None:
        """Stop (fast) if running, then start."""
        self.stop(timeout)
        self.start(timeout)

    def destroy(self) -> None:
        """Stop the server (immediately) and delete its directory."""
        if self.is_running():
            self.stop(mode="immediate")
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- inspection -----------------------------------------------------------------------

    def _pid_file_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def postmaster_pid(self) -> int | None:
        """The running postmaster's pid (from its pid file, checked against ``/proc``)."""
        pid = self._pid_file_pid()
        return pid if pid is not None and self.owns(pid) else None

    @property
    def pid(self) -> int | None:
        return self.postmaster_pid()

    def pids(self) -> list[int]:
        """The postmaster and its children (backends, checkpointer, WAL writer, ...)."""
        pid = self.postmaster_pid()
        return [] if pid is None else [pid, *_proc.children(pid)]

    def is_running(self) -> bool:
        return self.postmaster_pid() is not None

    def is_paused(self) -> bool:
        pid = self.postmaster_pid()
        return pid is not None and _proc.process_state(pid) == "T"

    def owns(self, pid: int) -> bool:
        """Whether ``pid`` is this node's postmaster (a live ``postgres -D <our data dir>``)."""
        if not _proc.is_alive(pid):
            return False
        argv = _proc.cmdline(pid)
        if not argv or os.path.basename(argv[0]) not in ("postgres", "postmaster"):
            return False
        try:
            data = argv[argv.index("-D") + 1]
        except (ValueError, IndexError):
            return False
        return os.path.realpath(data) == os.path.realpath(self.data_dir)

    def accepts_connections(self) -> bool:
        """``pg_isready`` against our port."""
        result = subprocess.run(
            [
                str(self.bin_dir / "pg_isready"),
                "-q",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-t",
                "1",
            ],
            capture_output=True,
            check=False,
            timeout=10,
        )
        return result.returncode == 0

    def describe(self) -> tuple[str | None, str]:
        """``ledger``, and whether it accepts connections."""
        return "ledger", "accepts connections" if self.accepts_connections() else "not ready"

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's log."""
        return _proc.tail(self.log_path, chars)

    # -- databases ------------------------------------------------------------------------

    def _keygen_role(self, database: str, password: str) -> None:
        """The ``keygen`` role, with ``password``, owning ``database`` (so that its schema
        migrations may create tables in it)."""
        self.psql(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{KEYGEN_USER}') "
            f"THEN CREATE ROLE {KEYGEN_USER} LOGIN; END IF; END $$;"
        )
        self.psql(f"ALTER ROLE {KEYGEN_USER} LOGIN PASSWORD '{password}'", secret=True)
        self.psql(f'ALTER DATABASE "{database}" OWNER TO {KEYGEN_USER}')

    def client_env(self) -> dict[str, str]:
        """The environment for ``psql``, ``pg_dump``... as the superuser: on a secure node
        its password and the TLS settings (libpq's ``PG*`` variables)."""
        env = dict(os.environ)
        if self.security is not None:
            env["PGPASSWORD"] = self.security.credentials.postgres_admin
            params = self.security.libpq_params()
            env.update(
                PGSSLMODE=params["sslmode"],
                PGSSLROOTCERT=params["sslrootcert"],
                PGSSLCERT=params["sslcert"],
                PGSSLKEY=params["sslkey"],
            )
        return env

    def psql(self, sql: str, database: str = "postgres", *, secret: bool = False) -> str:
        """Run one SQL command through ``psql`` as the superuser; return its unaligned output.

        ``secret``: ``sql`` holds a password, so it goes to psql's stdin rather than onto its
        command line, which every local user can read.
        """
        result = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-q",
                "-tA",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                SERVER_USER,
                "-d",
                database,
                *(["-f", "-"] if secret else ["-c", sql]),
            ],
            input=sql if secret else None,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            env=self.client_env(),
        )
        if result.returncode != 0:
            raise ClusterError(f"{self.name}: psql failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def create_database(self, name: str | None = None, prefix: str = "keygen_test") -> str:
        """Create database ``name`` unless it exists (a fresh uniquely named one when ``name``
        is None) and return its URL."""
        if name is None:
            self._databases += 1
            name = f"{prefix}_{os.getpid()}_{self._databases}"
        if not _IDENTIFIER.match(name):
            raise ValueError(f"database name {name!r} is not a plain identifier")
        if self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'") != "1":
            self.psql(f'CREATE DATABASE "{name}"')
        return with_database(self.url, name)

    def drop_database(self, url_or_name: str) -> None:
        """Drop a database (by URL or name), disconnecting its clients."""
        name = urlsplit(url_or_name).path.lstrip("/") if "://" in url_or_name else url_or_name
        if not _IDENTIFIER.match(name):
            raise ValueError(f"database name {name!r} is not a plain identifier")
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # -- helpers --------------------------------------------------------------------------

    @staticmethod
    def _server_user() -> str | None:
        return SERVER_USER if os.geteuid() == 0 else None

    def _check_reachable(self, user: str) -> None:
        """Fail clearly when ``user`` cannot reach our directory (e.g. under a 0700 parent)."""
        probe = subprocess.run(
            _proc.as_user(["test", "-w", str(self.directory)], user),
            check=False,
            capture_output=True,
        )
        if probe.returncode != 0:
            try:
                pwd.getpwnam(user)
            except KeyError:
                raise ClusterError(
                    f"PostgreSQL must run as the {user!r} user, which does not exist; "
                    "install PostgreSQL (apt-get install postgresql)"
                ) from None
            raise ClusterError(
                f"PostgreSQL runs as the {user!r} user, which cannot reach {self.directory} "
                "(a parent directory is not traversable for it); choose a directory under "
                "a world-traversable path such as /tmp or /var/tmp"
            )

    def _run(self, argv: list[str], what: str) -> None:
        result = subprocess.run(
            _proc.as_user(argv, self._server_user()),
            capture_output=True,
            text=True,
            cwd=self.directory,
            check=False,
            timeout=300,
        )
        if result.returncode != 0:
            raise ClusterError(f"{self.name}: {what} failed: {result.stdout}{result.stderr}")

    def pg_ctl_argv(self, *args: str) -> list[str]:
        """``pg_ctl -D <data dir> ARGS`` as the server's user: a command another process (a
        test session's watchdog, say) can run on this node after we are gone."""
        return _proc.as_user(
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args], self._server_user()
        )

    def _pg_ctl(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.pg_ctl_argv(*args),
            capture_output=True,
            text=True,
            cwd=self.directory,
            check=False,
            timeout=timeout,
            start_new_session=True,  # the postmaster must outlive `keygen cluster up`
        )

    def __repr__(self) -> str:
        return f"PostgresNode({self.name!r}, port={self.port}, directory={str(self.directory)!r})"
