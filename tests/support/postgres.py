"""The suite's PostgreSQL: a private :class:`~keygen.cluster.postgres.PostgresNode`, or the
existing server ``KEYGEN_TEST_DATABASE_URL`` names.

The private server is the launcher's own node (``initdb`` in a temp dir, a free port,
127.0.0.1 only, ``fsync=on``: the crash tests are meaningless without it), watched by a
process that stops and deletes it if the test process dies. An external server cannot be
stopped or crashed by the suite, so the tests that must do so are skipped against it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from keygen.cluster.binaries import find_postgres_bin_dir
from keygen.cluster.postgres import PostgresNode, with_database
from keygen.cluster.processes import free_port
from keygen.ledgers.postgres import PostgresLedger

TEST_DATABASE_URL_ENV = "KEYGEN_TEST_DATABASE_URL"

# Runs beside the test process: when that process is gone (its end of the pipe closes, even
# after SIGKILL), stop the server and delete its files, so no session leaks a server.
_WATCHDOG = """
import shutil, subprocess, sys
sys.stdin.buffer.read()
subprocess.run(sys.argv[1:-1], capture_output=True, timeout=120)
shutil.rmtree(sys.argv[-1], ignore_errors=True)
"""


class PostgresServer:
    """One PostgreSQL server the suite uses: private (:attr:`node` set) or external."""

    def __init__(
        self,
        url: str,
        *,
        node: PostgresNode | None = None,
        watchdog: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self.url = url
        #: The private server, for tests that stop, crash or pause it; None when external.
        self.node = node
        self._watchdog = watchdog
        self._databases = 0

    @property
    def controllable(self) -> bool:
        """Whether this suite may stop, crash and restart the server."""
        return self.node is not None

    @classmethod
    def private(cls) -> PostgresServer:
        """``initdb`` a fresh cluster in a temp dir and start it on a free port."""
        bin_dir = find_postgres_bin_dir()
        if bin_dir is None:
            raise RuntimeError(
                "PostgreSQL server binaries (initdb, pg_ctl) not found; run scripts/install "
                f"or set {TEST_DATABASE_URL_ENV}"
            )
        node = PostgresNode(
            Path(tempfile.mkdtemp(prefix="keygen-pg-")), free_port(), bin_dir=bin_dir, database=None
        )
        stop = node.pg_ctl_argv("-m", "immediate", "-w", "stop")
        watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, *stop, str(node.directory)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # outlives a killed test process
        )
        node.start()
        return cls(node.url, node=node, watchdog=watchdog)

    @classmethod
    def external(cls, url: str) -> PostgresServer:
        return cls(url)

    def ensure_running(self) -> None:
        """Resume or restart the private server if a test left it paused or stopped."""
        if self.node is not None:
            self.node.ensure_running()

    def destroy(self) -> None:
        """Stop the server (if ours) and delete its files."""
        if self.node is None:
            return
        self.node.destroy()
        if self._watchdog is not None:
            assert self._watchdog.stdin is not None
            self._watchdog.stdin.close()  # nothing left for it to do: it exits
            self._watchdog.wait(timeout=120)
            self._watchdog = None

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
        # asyncpg, not the node's psql: an external server may want a password or another role.
        conn = await asyncpg.connect(self.url, timeout=10)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()


@asynccontextmanager
async def opened(url: str, **options: Any) -> AsyncIterator[PostgresLedger]:
    """A PostgreSQL ledger opened on ``url`` (with ``options``), closed on the way out."""
    ledger = await PostgresLedger.open(url, **options)
    try:
        yield ledger
    finally:
        await ledger.aclose()


@asynccontextmanager
async def connection(url: str) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    """A plain asyncpg connection to ``url``, closed on the way out."""
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()
