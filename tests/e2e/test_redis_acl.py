"""Least privilege on Redis, on a real secure topology: the user Keygen runs as may call the
function library but never load, replace or delete it; the launcher's admin installs it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from keygen.cluster.topology import LocalCluster
from keygen.dispensers import redis_functions as fn
from tests.e2e.test_secure_topology import tls_client

pytestmark = pytest.mark.e2e


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[LocalCluster]:
    """A secure topology (TLS, ACL users) without PostgreSQL, on free ports."""
    topology = LocalCluster(
        tmp_path / "cluster", down_after_ms=1000, with_postgres=False, secure=True
    )
    topology.up()
    try:
        yield topology
    finally:
        topology.kill_all()


def test_the_service_user_calls_the_functions_but_cannot_load_or_delete_them(
    secure: LocalCluster,
) -> None:
    """After cluster up the library is on the master (installed as admin); as keygen,
    FUNCTION LIST and FCALL work, and FUNCTION LOAD, LOAD REPLACE, DELETE and FLUSH are
    refused, so the service's password cannot replace what every instance runs."""
    assert secure.security is not None
    password = secure.security.credentials.redis_keygen
    port = secure.master().port
    with tls_client(secure, port, username="keygen", password=password) as node:
        (library,) = node.function_list(library=fn.LIBRARY_NAME)
        assert library[library.index("library_name") + 1] == fn.LIBRARY_NAME
        grant, *_ = node.fcall(fn.PEEK, 1, "keygen:lease:default")
        assert grant is not None
        hostile = fn.LIBRARY.replace("return", "return", 1)
        for command in (
            ("FUNCTION", "LOAD", hostile),
            ("FUNCTION", "LOAD", "REPLACE", hostile),
            ("FUNCTION", "DELETE", fn.LIBRARY_NAME),
            ("FUNCTION", "FLUSH"),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                node.execute_command(*command)
        assert node.function_list(library=fn.LIBRARY_NAME)  # still there
