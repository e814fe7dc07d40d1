"""``keygen serve`` that cannot start for a reason of its own says why in one line: no
traceback, the setting named, a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.support.processes import free_port

pytestmark = pytest.mark.e2e


def serve(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KEYGEN_")}
    return subprocess.run(
        [sys.executable, "-m", "keygen", "serve", "--port", str(free_port())],
        env={**clean, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    (line,) = [line for line in output.splitlines() if "keygen cannot start" in line]
    for text in expected:
        assert text in line, line


def test_a_ledger_that_refuses_the_connection_is_one_line(
    postgres_url: str, tmp_path: Path
) -> None:
    """A PostgreSQL ledger that refuses Keygen (here: its database does not exist) stops the
    start-up with one line that names the ledger and PostgreSQL's reason."""
    parts = urlsplit(postgres_url)
    missing = urlunsplit(parts._replace(path="/keygen_no_such_database"))
    result = serve({"KEYGEN_DATABASE_URL": missing, "KEYGEN_DATA_DIR": str(tmp_path)}, tmp_path)
    assert_one_line(result, "PostgreSQL ledger", "keygen_no_such_database")


def test_a_data_dir_that_cannot_hold_the_ledger_is_one_line(tmp_path: Path) -> None:
    """A KEYGEN_DATA_DIR that is a file stops the start-up with one line naming the setting."""
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    result = serve({"KEYGEN_DATA_DIR": str(not_a_dir)}, tmp_path)
    assert_one_line(result, "KEYGEN_DATA_DIR", str(not_a_dir))
