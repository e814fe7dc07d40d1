"""``PostgresNode`` against a real server: the crash, stall and restart operations fault tests
rely on."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from keygen.cluster import ClusterError, PostgresNode, processes
from keygen.cluster.postgres import with_address

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def node() -> Iterator[PostgresNode]:
    """A private server on a free port, in a directory the ``postgres`` user can reach."""
    base = Path(tempfile.mkdtemp(prefix="keygen-pgnode-"))
    base.chmod(0o755)
    server = PostgresNode(base / "postgres", processes.free_port())
    try:
        server.start()
        yield server
    finally:
        server.destroy()
        shutil.rmtree(base, ignore_errors=True)


def test_sigkill_then_restart_keeps_committed_data(node: PostgresNode) -> None:
    """SIGKILL of every server process returns only once all are gone, and a restart
    recovers what was committed before."""
    node.psql(
        "CREATE TABLE IF NOT EXISTS t (v int); INSERT INTO t VALUES (42)",
        node.database or "postgres",
    )
    pids = node.pids()
    assert len(pids) > 1  # the postmaster and its background processes
    node.kill()
    assert not any(processes.exists(pid) for pid in pids)
    assert not node.is_running()
    node.start()
    assert node.psql("SELECT max(v) FROM t", node.database or "postgres") == "42"


def test_pause_resume_and_stop_modes(node: PostgresNode) -> None:
    """A paused server is reported paused and answers again once resumed; an immediate stop
    (a crash without checkpoint) and a fast one both allow a clean restart."""
    node.pause()
    try:
        assert node.is_paused() and not node.accepts_connections()
    finally:
        node.resume()
    assert node.accepts_connections()
    for mode in ("immediate", "fast"):
        node.stop(mode=mode)
        assert not node.is_running()
        node.start()
    with pytest.raises(ClusterError):
        node.start()  # already running


def test_databases_are_created_and_dropped(node: PostgresNode) -> None:
    """create_database() returns the URL of a new database, and drop_database() removes it."""
    url = node.create_database()
    name = url.rsplit("/", 1)[-1]
    assert node.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{name}'") == "1"
    node.drop_database(url)
    assert node.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{name}'") == "0"


def test_with_address_changes_only_host_and_port() -> None:
    """A database URL moved to another address (keygen chaos's PostgreSQL proxy) keeps its
    user, password, database and TLS settings."""
    url = "postgresql://keygen:pw@127.0.0.1:5432/keygen?sslmode=verify-full&sslrootcert=/ca"
    assert with_address(url, "127.0.0.1:6000") == url.replace("5432", "6000")
    assert with_address("postgresql://postgres@h:1/db", "h:2") == "postgresql://postgres@h:2/db"
