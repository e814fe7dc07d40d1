"""The ``keygen`` command, run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from keygen import __version__
from tests.support.processes import ServeProcess


def keygen(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keygen", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_version() -> None:
    """--version prints the package version."""
    result = keygen("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"keygen {__version__}"


def test_verify_passes_and_fails(tmp_path: Path) -> None:
    """verify exits 0 on disjoint ranges and 1, naming the overlap, when two ranges share IDs."""
    good = tmp_path / "good.jsonl"
    good.write_text('{"start": 1, "end": 5, "size": 5}\n{"start": 6, "end": 9, "size": 4}\n')
    result = keygen("verify", str(good))
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith("OK: 2 ranges, 9 IDs")

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"start": 4, "end": 7, "size": 4}\n')
    result = keygen("verify", str(good), str(bad))
    assert result.returncode == 1
    assert "overlap in 'default'" in result.stdout
    assert "VIOLATION" in result.stdout and "(4 duplicate IDs)" in result.stdout


def test_verify_reports_unreadable_input(tmp_path: Path) -> None:
    """verify exits 2 with a message, not a traceback, on a file that is not allocations."""
    junk = tmp_path / "junk.jsonl"
    junk.write_text("hello\n")
    result = keygen("verify", str(junk))
    assert result.returncode == 2
    assert "junk.jsonl:1" in result.stderr and "Traceback" not in result.stderr


def test_invalid_configuration_is_reported_clearly(tmp_path: Path) -> None:
    """A bad setting stops the command with its name, not a traceback."""
    result = keygen("ledger", "status", env={"ID_BLOCK_SIZE": "zero"})
    assert result.returncode == 2
    assert "ID_BLOCK_SIZE" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.e2e
def test_allocate_and_ledger_status_against_a_server(tmp_path: Path) -> None:
    """allocate prints the server's range as JSON; ledger status shows the counter after it."""
    env = {"KEYGEN_DATA_DIR": str(tmp_path / "data"), "KEYGEN_LEASE_SIZE": "500"}
    server = ServeProcess(env, log=tmp_path / "serve.log").start()
    try:
        result = keygen("allocate", "--size", "42", "--namespace", "orders", "--url", server.url)
        assert result.returncode == 0, result.stderr
        allocated = json.loads(result.stdout)
        assert (allocated["start"], allocated["end"], allocated["size"]) == (1, 42, 42)
        refused = keygen("allocate", "--size", "0", "--url", server.url)
        assert refused.returncode == 1 and "invalid_request" in refused.stderr
    finally:
        server.stop()
    status = keygen("ledger", "status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) == [
        {"namespace": "orders", "next_id": 501, "headroom": 2**63 - 1 - 500, "grants": 1}
    ]


def test_allocate_reports_an_unreachable_server() -> None:
    """allocate against nothing says it cannot reach the URL, without a traceback."""
    result = keygen("allocate", "--url", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert "cannot reach" in result.stderr and "Traceback" not in result.stderr
