"""Backups and restores: a restored ledger never hands out an ID issued after its backup."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from keygen.api import create_app
from keygen.backup import backup, restore
from keygen.checker import Record, check
from keygen.config import Settings
from keygen.errors import BackupError
from tests.support.app import running

pytestmark = pytest.mark.anyio


def quiet(message: str) -> None:
    """Progress output is not under test."""


async def allocate(settings: Settings, count: int) -> list[Record]:
    async with running(create_app(settings)) as http:
        return [await _one(http, 10 + i) for i in range(count)]


async def _one(http: httpx.AsyncClient, size: int) -> Record:
    body = (await http.post("/allocate", json={"size": size, "namespace": "orders"})).json()
    return Record.from_json({**body, "requested": size})


async def _backup_restore_cycle(settings: Settings, tmp_path: Path) -> None:
    before = await allocate(settings, 5)
    await backup(settings, tmp_path / "backup", quiet)
    between = await allocate(settings, 5)  # issued after the backup: must never come back
    changes = await restore(settings, tmp_path / "backup", {}, quiet)
    after = await allocate(settings, 5)
    verdict = check(before + between + after)
    assert verdict.ok, verdict.summary()
    restored, raised = changes["orders"]
    assert restored < max(r.end for r in between) <= raised


async def test_sqlite_backup_restore_never_rewinds(settings: Settings, tmp_path: Path) -> None:
    """SQLite: allocate, back up, allocate more, restore, allocate: no overlap."""
    await _backup_restore_cycle(settings.model_copy(update={"lease_size": 100}), tmp_path)


async def test_postgres_backup_restore_never_rewinds(
    settings: Settings, postgres_url: str, tmp_path: Path
) -> None:
    """PostgreSQL (pg_dump/pg_restore): allocate, back up, allocate more, restore, allocate:
    no overlap."""
    await _backup_restore_cycle(
        settings.model_copy(update={"database_url": postgres_url}), tmp_path
    )


async def test_restore_without_evidence_is_refused(settings: Settings, tmp_path: Path) -> None:
    """Restoring onto a lost ledger with nothing else to go by is refused; an operator floor
    lets it through and raises every counter to it."""
    await allocate(settings, 3)
    await backup(settings, tmp_path / "backup", quiet)
    lost = settings.model_copy(update={"data_dir": tmp_path / "new-machine"})
    with pytest.raises(BackupError, match="--floor"):
        await restore(lost, tmp_path / "backup", {}, quiet)
    changes = await restore(lost, tmp_path / "backup", {"*": 10**9}, quiet)
    assert changes["orders"][1] == 10**9
    assert all(r.start > 10**9 for r in await allocate(lost, 3))


async def test_cli_backup_and_restore(tmp_path: Path) -> None:
    """keygen backup and keygen restore work as commands, and restore reports the raise."""
    env = {**os.environ, "KEYGEN_DATA_DIR": str(tmp_path / "data"), "KEYGEN_LEASE_SIZE": "50"}

    def keygen(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "keygen", *args],
            env=env,
            text=True,
            capture_output=True,
            timeout=60,
        )

    settings = Settings(_env_file=None, data_dir=tmp_path / "data", lease_size=50)
    await allocate(settings, 2)
    status = keygen("ledger", "status", "--json")
    assert status.returncode == 0, status.stderr
    (orders,) = json.loads(status.stdout)
    assert keygen("backup", "--out", str(tmp_path / "b")).returncode == 0
    await allocate(settings, 2)
    result = keygen("restore", str(tmp_path / "b"))
    assert result.returncode == 0, result.stderr
    # The table: the last ID granted when the backup was taken, and now.
    assert "orders" in result.stdout and f"{orders['next_id'] - 1:,}" in result.stdout
    refused = keygen("backup", "--out", str(tmp_path / "b"))
    assert refused.returncode == 1 and "not empty" in refused.stderr


@pytest.mark.parametrize("ledger", ["sqlite", "postgresql"])
def test_a_backup_of_a_ledger_no_instance_created_says_so(
    ledger: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """keygen backup of a ledger that holds no Keygen schema yet (nothing was ever served from
    it) fails with one line that says so, and writes no backup folder."""
    env = {**os.environ, "KEYGEN_DATA_DIR": str(tmp_path / "data")}
    env.pop("KEYGEN_DATABASE_URL", None)
    if ledger == "postgresql":
        env["KEYGEN_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    result = subprocess.run(
        [sys.executable, "-m", "keygen", "backup", "--out", str(tmp_path / "b")],
        env=env,
        text=True,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "no Keygen ledger" in last and "nothing to back up" in last, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "b").exists()
