"""``keygen restore`` refuses to replace a ledger that instances are running on, unless
forced: a real ``keygen serve`` on the embedded ledger, and on PostgreSQL."""

from __future__ import annotations

import asyncio
import fcntl
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from keygen.backup import backup, restore
from keygen.config import Settings
from keygen.errors import BackupError
from keygen.live_instances import live_instances
from tests.support.processes import ServeProcess
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


def quiet(message: str) -> None:
    """Progress output is not under test."""


def allocate(server: ServeProcess, count: int) -> None:
    for _ in range(count):
        answer = httpx.post(f"{server.url}/allocate", json={"size": 10}, timeout=10)
        assert answer.status_code == 200, answer.text


def locked(path: Path) -> bool:
    """Whether another process holds ``path``'s lock (as a running instance holds its
    history's from its first probe round on)."""
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_restore_refuses_while_an_instance_runs_on_the_embedded_ledger(tmp_path: Path) -> None:
    """With `keygen serve` running on the data dir, `keygen restore` exits 1 naming what
    shows it (the lock it holds) and restores nothing; --force restores; once the instance
    has stopped, restore goes ahead without it."""
    data = tmp_path / "data"
    settings = Settings(_env_file=None, data_dir=data, lease_size=50)
    env = {**os.environ, "KEYGEN_DATA_DIR": str(data), "KEYGEN_LEASE_SIZE": "50"}
    server = ServeProcess({"KEYGEN_DATA_DIR": str(data)}, log=tmp_path / "serve.log").start()
    try:
        allocate(server, 2)
        asyncio.run(backup(settings, tmp_path / "backup", quiet))
        wait_for(lambda: locked(data / "history.lock"), 10, "the instance leading its history")

        def restore_command(*flags: str) -> subprocess.CompletedProcess[str]:
            argv = [sys.executable, "-m", "keygen", "restore", str(tmp_path / "backup"), *flags]
            return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)

        refused = restore_command()
        assert refused.returncode == 1, refused
        assert "refusing to restore while Keygen instances may be running" in refused.stderr
        assert "history.lock is locked by a running process" in refused.stderr
        assert "--force" in refused.stderr and "Traceback" not in refused.stderr
        forced = restore_command("--force")
        assert forced.returncode == 0, forced.stderr
    finally:
        server.stop()
    assert asyncio.run(live_instances(settings, quiet)) == []
    changes = asyncio.run(restore(settings, tmp_path / "backup", {}, quiet))
    assert changes["default"][1] >= 20


def test_restore_refuses_while_an_instance_holds_postgresql_sessions(
    postgres_url: str, tmp_path: Path
) -> None:
    """With `keygen serve` connected to the PostgreSQL ledger (from another data dir),
    restore is refused naming its sessions, goes ahead with force, and without it once the
    instance has stopped and its sessions are gone."""
    instance = {"KEYGEN_DATABASE_URL": postgres_url, "KEYGEN_DATA_DIR": str(tmp_path / "i")}
    settings = Settings(_env_file=None, data_dir=tmp_path / "operator", database_url=postgres_url)
    server = ServeProcess(instance, log=tmp_path / "serve.log").start()
    try:
        allocate(server, 2)
        asyncio.run(backup(settings, tmp_path / "backup", quiet))
        with pytest.raises(BackupError, match=r"may be running on this ledger: PostgreSQL session"):
            asyncio.run(restore(settings, tmp_path / "backup", {}, quiet))
        changes = asyncio.run(restore(settings, tmp_path / "backup", {}, quiet, force=True))
        assert changes["default"][1] >= 20
    finally:
        server.stop()

    def no_sessions() -> bool:
        return asyncio.run(live_instances(settings, quiet)) == []

    wait_for(no_sessions, 10, "the stopped instance's PostgreSQL sessions gone")
    assert asyncio.run(restore(settings, tmp_path / "backup", {}, quiet))["default"][1] >= 20
