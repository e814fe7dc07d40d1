"""The secure topology's configuration: passwords made once and kept private, ACL lines that
hold only their hashes, the ``keygen`` user limited to what Keygen runs."""

from __future__ import annotations

import hashlib
from pathlib import Path

from keygen.cluster.security import KEYGEN_DATA_COMMANDS, Security


def test_credentials_are_generated_once_and_kept_0600(tmp_path: Path) -> None:
    """The first use writes credentials.json 0600; a second Security on the directory reads
    the same passwords; the repr shows none of them."""
    first = Security(tmp_path).credentials
    path = tmp_path / "credentials.json"
    assert path.stat().st_mode & 0o777 == 0o600
    again = Security(tmp_path).credentials
    assert again == first
    assert len({first.redis_keygen, first.sentinel_keygen, first.postgres_keygen}) == 3
    assert first.redis_keygen not in repr(first)


def test_acl_lines_hold_hashes_and_keygen_is_confined(tmp_path: Path) -> None:
    """The data node's and the Sentinel's ACL users name SHA-256 hashes, not passwords;
    default is off; keygen is confined to keygen:* keys and its own commands."""
    security = Security(tmp_path)
    c = security.credentials
    node = security.data_node_lines()
    sentinel = security.sentinel_lines()
    assert node[0] == sentinel[0] == "user default off"
    keygen = next(line for line in node if line.startswith("user keygen "))
    assert "#" + hashlib.sha256(c.redis_keygen.encode()).hexdigest() in keygen
    assert c.redis_keygen not in "\n".join(node) and c.sentinel_keygen not in "\n".join(sentinel)
    assert " ~keygen:* " in keygen and " -@all " in keygen
    assert all(f"+{command}" in keygen.split() for command in KEYGEN_DATA_COMMANDS)
    assert "+@all" not in keygen and "+config" not in keygen
