"""``keygen config check`` against the real topology: every layer asked, a dead part named."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from keygen.cluster.topology import LocalCluster
from tests.support.processes import keygen

pytestmark = pytest.mark.e2e


def test_every_layer_is_asked_and_a_dead_sentinel_fails_its_row(
    cluster: LocalCluster, postgres_url: str, tmp_path: Path
) -> None:
    """With Redis Sentinel and PostgreSQL up every row passes (the Sentinels name the master
    and have their quorum, the master is a master, the ledger answers with its schema); with
    one Sentinel killed its row fails and the command exits 1."""
    env = {
        **cluster.env(),
        "KEYGEN_DATABASE_URL": postgres_url,
        "KEYGEN_DATA_DIR": str(tmp_path / "data"),
    }
    result = keygen("config", "check", "--json", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    checks = {c["part"]: c for c in json.loads(result.stdout)}
    sentinels = [part for part in checks if part.startswith("sentinel ")]
    assert len(sentinels) == 3 and all("OK 3 usable" in checks[s]["detail"] for s in sentinels)
    assert checks["redis master"]["detail"].startswith("role master")
    assert "postgresql: answers" in checks["ledger"]["detail"]
    assert "schema at None, migrated to" in checks["ledger"]["detail"]  # a fresh database

    dead = cluster.sentinels[0]
    dead.kill(signal.SIGKILL)
    result = keygen("config", "check", "--json", env=env)
    assert result.returncode == 1
    checks = {c["part"]: c for c in json.loads(result.stdout)}
    assert checks[f"sentinel 127.0.0.1:{dead.port}"]["ok"] is False
    assert checks["redis master"]["ok"] is True
