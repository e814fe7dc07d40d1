"""``keygen keys list`` and ``keygen ledger status --keys`` as a script or a pager reads them:
through a pipe, with names whose creator typed control characters."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from keygen.config import Settings
from keygen.ledgers import open_ledger
from keygen.ledgers.sqlite import LEDGER_FILENAME
from tests.support.processes import keygen

#: Long enough that rich, at 80 columns, would cut them with an ellipsis.
SCOPES = (
    "allocate:a-very-long-namespace-glob-for-the-orders-service-*",
    "allocate:another-very-long-namespace-glob-for-invoices-*",
    "read",
)
#: A name with an ANSI colour escape and a newline in it.
NAME = "evil\x1b[31mred\nsecond line"
ESCAPED = "evil\\x1b[31mred\\nsecond line"


def _create(env: dict[str, str]) -> str:
    """A key whose name holds control characters, as one created before names were checked
    is (``keys create`` refuses such a name now); its id."""
    scopes = [arg for scope in SCOPES for arg in ("--scope", scope)]
    created = keygen("keys", "create", "--name", "plain", *scopes, "--json", env=env)
    assert created.returncode == 0, created.stderr
    key_id: str = json.loads(created.stdout)["id"]

    # The row as an older Keygen left it: the embedded ledger's file, edited directly.
    with sqlite3.connect(Path(env["KEYGEN_DATA_DIR"]) / LEDGER_FILENAME) as db:
        db.execute("UPDATE api_keys SET name = ? WHERE id = ?", (NAME, key_id))
    return key_id


def test_keys_create_refuses_a_name_with_control_characters(tmp_path: Path) -> None:
    """`keys create` refuses a name with an ANSI escape and a newline, showing it escaped."""
    env = {"KEYGEN_DATA_DIR": str(tmp_path / "data")}
    created = keygen("keys", "create", "--name", NAME, "--scope", "read", env=env)
    assert created.returncode == 1
    assert "must be printable" in created.stderr and ESCAPED in created.stderr, created.stderr
    assert "\x1b" not in created.stderr


def test_keys_list_into_a_pipe_prints_every_value_whole(tmp_path: Path) -> None:
    """Piped at 80 columns, `keys list` prints each scope and the id in full on the key's one
    line, without an ellipsis, and the name's control characters as escapes."""
    env = {"KEYGEN_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "80"}
    key_id = _create(env)
    listed = keygen("keys", "list", env=env)  # stdout is a pipe
    assert listed.returncode == 0, listed.stderr
    assert "…" not in listed.stdout and "\x1b" not in listed.stdout, listed.stdout
    (row,) = [line for line in listed.stdout.splitlines() if key_id in line]
    assert " ".join(SCOPES) in row and ESCAPED in row, row


def test_ledger_status_keys_escapes_a_names_control_characters(tmp_path: Path) -> None:
    """`ledger status --keys` shows the name with its ANSI escape and newline as escapes:
    nothing of it reaches the terminal raw."""
    env = {"KEYGEN_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "80"}
    key_id = _create(env)

    async def record_usage() -> None:
        ledger = await open_ledger(Settings(_env_file=None, data_dir=tmp_path / "data"))
        try:
            today = datetime.now(UTC).strftime("%Y-%m-%d")
            await ledger.add_key_usage(today, {key_id: (3, 300)})
        finally:
            await ledger.aclose()

    asyncio.run(record_usage())
    status = keygen("ledger", "status", "--keys", env=env)
    assert status.returncode == 0, status.stderr
    assert "\x1b" not in status.stdout, status.stdout
    (row,) = [line for line in status.stdout.splitlines() if key_id in line]
    assert ESCAPED in row and "300" in row, row
