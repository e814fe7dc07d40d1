"""Redis on a real secure topology: the user Keygen runs as may call the function library but
never load, replace or delete it (the launcher's admin installs it); a wrong Sentinel password
and a foreign client certificate are reported in one short line, never as redis-py reprs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from keygen.cluster.certs import make_certificates
from keygen.cluster.topology import LocalCluster
from keygen.dispensers import redis_functions as fn
from tests.e2e.test_secure_topology import tls_client
from tests.support.processes import ServeProcess

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


def redis_error(
    env: dict[str, str], log: Path, until: Callable[[str], bool] = lambda _: True
) -> tuple[str, str]:
    """The Redis layer's error in /health of a service started with ``env`` (the first that
    ``until`` accepts, within 20 s: each read asks the layers anew), and its log."""
    server = ServeProcess({**env, "KEYGEN_AUTH": "off"}, log=log).start()
    seen: list[str] = []
    deadline = time.monotonic() + 20
    try:
        while not seen or (not until(seen[-1]) and time.monotonic() < deadline):
            health = httpx.get(f"{server.url}/health", timeout=10).json()
            (layer,) = [x for x in health["layers"] if x["source"] == "redis_sentinel"]
            seen.append(str(layer["error"]))
    finally:
        server.stop()
    return seen[-1], log.read_text()


def test_a_wrong_sentinel_password_is_one_short_line(secure: LocalCluster, tmp_path: Path) -> None:
    """The Sentinels refusing the login shows in /health and the log as a short line that
    says so, with no object reprs and no certificate path."""
    env = {**secure.env(), "KEYGEN_REDIS_SENTINEL_PASSWORD": "wrong-password-0123456789"}
    error, text = redis_error(env, tmp_path / "serve.log")
    assert "invalid username-password pair" in error, error
    assert len(error) <= 301 and "<" not in error, error
    assert secure.security is not None
    certificates = str(secure.security.certs.directory)
    assert certificates not in error and certificates not in text
    assert all(len(line) < 1000 for line in text.splitlines()), "a repr reached the log"


def test_a_foreign_client_certificate_is_named_as_such(
    secure: LocalCluster, tmp_path: Path
) -> None:
    """A client certificate that the nodes' CA did not sign is reported as the certificate
    refused (naming KEYGEN_REDIS_SSL_CERTFILE), not as "connection lost" or "no master"."""
    foreign = make_certificates(tmp_path / "foreign")
    env = {
        **secure.env(),
        "KEYGEN_REDIS_SSL_CERTFILE": str(foreign.client_cert),
        "KEYGEN_REDIS_SSL_KEYFILE": str(foreign.client_key),
    }
    # The server's alert reaches the client unless its reset overtakes it (TLS 1.3 verifies
    # the client's certificate after the client's side of the handshake is done): a later
    # probe then reads it.
    error, _ = redis_error(
        env, tmp_path / "serve.log", until=lambda e: "refused this client's certificate" in e
    )
    assert "refused this client's certificate" in error and "KEYGEN_REDIS_SSL_CERTFILE" in error, (
        error
    )
