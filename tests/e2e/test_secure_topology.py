"""The secure topology (``keygen cluster up --secure``) against real processes: Keygen
reaches Redis, the Sentinels and PostgreSQL over TLS as the ``keygen`` user, nothing reaches
them without TLS or a password, and a wrong password is a failed layer that says nothing of
the secret.

Tests run in file order on the module's topology; the last one stops the Redis nodes.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from keygen.checker import Record, check
from keygen.cluster.certs import make_certificates
from keygen.cluster.security import Credentials
from keygen.cluster.topology import LocalCluster
from tests.support.processes import ServeProcess, keygen, scratch_dir

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

DOWN_AFTER_MS = 1000
#: Seconds any one awaited condition may take (a failover completes in about 2.3 s).
DEADLINE = 20.0


def wait_for(condition: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    """``condition()``'s first truthy value, looked at until ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with scratch_dir("keygen-secure-") as path:
        yield path


@pytest.fixture(scope="module")
def secure(scratch: Path) -> Iterator[tuple[LocalCluster, dict[str, str]]]:
    """``keygen cluster up --secure`` on free ports, and the environment it printed."""
    directory = scratch / "cluster"
    result = keygen(
        "cluster", "up", "--secure", "--dir", str(directory), "--base-port", "0",
        "--down-after-ms", str(DOWN_AFTER_MS),
    )  # fmt: skip
    try:
        assert result.returncode == 0, result.stderr
        # Each line is `export NAME=VALUE`, VALUE quoted for the shell.
        pairs = (shlex.split(line)[1].split("=", 1) for line in result.stdout.splitlines())
        env = {name: value for name, value in pairs}
        yield LocalCluster.load(directory), env
    finally:
        cluster = LocalCluster.load(directory)
        cluster.down()
        cluster.kill_all()


@pytest.fixture(scope="module")
def cluster(secure: tuple[LocalCluster, dict[str, str]]) -> LocalCluster:
    return secure[0]


@pytest.fixture(scope="module")
def env(secure: tuple[LocalCluster, dict[str, str]]) -> dict[str, str]:
    return secure[1]


@pytest.fixture(scope="module")
def credentials(cluster: LocalCluster) -> Credentials:
    assert cluster.security is not None
    return cluster.security.credentials


@pytest.fixture(scope="module")
def service(env: dict[str, str], scratch: Path) -> Iterator[ServeProcess]:
    """``keygen serve`` configured from nothing but the cluster's environment."""
    server = ServeProcess(env, log=scratch / "serve.log").start()
    try:
        yield server
    finally:
        server.stop()


def allocate(server: ServeProcess, size: int = 10) -> dict[str, Any]:
    response = httpx.post(f"{server.url}/allocate", json={"size": size}, timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def allocated_by(
    server: ServeProcess, source: str, seen: list[dict[str, Any]], size: int = 10
) -> bool:
    seen.append(allocate(server, size))
    return bool(seen[-1]["source"] == source)


def tls_client(cluster: LocalCluster, port: int, **options: Any) -> redis.Redis:
    """A client of ``port`` with the topology's CA and client certificate, no user."""
    assert cluster.security is not None
    certs = cluster.security.certs
    defaults: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "ssl": True,
        "ssl_ca_certs": str(certs.ca),
        "ssl_certfile": str(certs.client_cert),
        "ssl_keyfile": str(certs.client_key),
        "ssl_check_hostname": True,
        "socket_timeout": 5,
        "decode_responses": True,
        "retry": Retry(NoBackoff(), 0),
    }
    return redis.Redis(**{**defaults, **options})


def plain_answer(port: int) -> bytes:
    """What a TLS port answers to a plain-text PING: nothing, the connection is closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
        plain.sendall(b"PING\r\n")
        try:
            return plain.recv(100)
        except ConnectionResetError:
            return b""


def refused_acl_entries(cluster: LocalCluster) -> list[dict[str, Any]]:
    """What the nodes' ACL logs hold against ``keygen`` other than failed logins."""
    entries = []
    for node in [*cluster.redis_nodes, *cluster.sentinels]:
        if node.is_running():
            with node.client() as admin:
                log: list[dict[str, Any]] = admin.acl_log()
            entries += [
                {**e, "node": node.name}
                for e in log
                if e.get("username") == "keygen" and e.get("reason") != "auth"
            ]
    return entries


def reset_acl_logs(cluster: LocalCluster) -> None:
    for node in [*cluster.redis_nodes, *cluster.sentinels]:
        with node.client() as admin:
            admin.acl_log_reset()


def test_the_environment_names_every_secure_setting(
    cluster: LocalCluster, env: dict[str, str], credentials: Credentials
) -> None:
    """`cluster up --secure` prints the keygen user's credentials, TLS for Redis and the
    Sentinels and a verify-full database URL; passwords and keys are 0600, the config files
    hold only hashes of the ACL passwords, pg_hba has a single hostssl line, and `cluster
    status` masks every secret."""
    assert cluster.security is not None
    certs = cluster.security.certs
    assert env["KEYGEN_REDIS_USERNAME"] == env["KEYGEN_REDIS_SENTINEL_USERNAME"] == "keygen"
    assert env["KEYGEN_REDIS_PASSWORD"] == credentials.redis_keygen
    assert env["KEYGEN_REDIS_SENTINEL_PASSWORD"] == credentials.sentinel_keygen
    assert env["KEYGEN_REDIS_TLS"] == env["KEYGEN_REDIS_SENTINEL_TLS"] == "true"
    assert env["KEYGEN_REDIS_SSL_CA_CERTS"] == str(certs.ca)
    url = env["KEYGEN_DATABASE_URL"]
    assert url.startswith(f"postgresql://keygen:{credentials.postgres_keygen}@127.0.0.1:")
    assert "sslmode=verify-full" in url and f"sslrootcert={certs.ca}" in url
    assert keygen("cluster", "env", "--dir", str(cluster.directory)).stdout.count("export") == len(
        env
    )

    for private in (cluster.security.credentials_path, certs.server_key, certs.client_key):
        assert private.stat().st_mode & 0o777 == 0o600, private
    for node in [*cluster.redis_nodes, *cluster.sentinels]:
        assert node.conf_path.stat().st_mode & 0o077 == 0, node.conf_path
        assert node.directory.stat().st_mode & 0o077 == 0, node.directory
        config = node.conf_path.read_text()
        assert credentials.redis_keygen not in config and credentials.sentinel_keygen not in config
        assert "port 0" in config and f"tls-port {node.port}" in config
    assert cluster.postgres is not None
    hba = (cluster.postgres.data_dir / "pg_hba.conf").read_text()
    rules = [line for line in hba.splitlines() if line.strip() and not line.startswith("#")]
    assert rules == ["hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-ca"]

    status = keygen("cluster", "status", "--json", "--dir", str(cluster.directory))
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["master"] is not None and {p["state"] for p in shown["processes"]} == {"running"}
    for secret in (credentials.redis_keygen, credentials.sentinel_keygen):
        assert secret not in status.stdout
    assert credentials.postgres_keygen not in status.stdout


def test_nothing_reaches_a_node_without_tls_and_a_password(
    cluster: LocalCluster, env: dict[str, str], scratch: Path
) -> None:
    """Plain TCP to a data node or a Sentinel gets no answer, TLS without a user is refused
    (default is off), a server certificate from another CA is rejected, and PostgreSQL
    refuses sslmode=disable and a certificate it cannot verify."""
    master, sentinel = cluster.master(), cluster.sentinels[0]
    for port in (master.port, sentinel.port):
        assert plain_answer(port) == b""
        with pytest.raises(redis.AuthenticationError), tls_client(cluster, port) as anonymous:
            anonymous.ping()
    other = make_certificates(scratch / "other-ca")
    with (
        pytest.raises(redis.ConnectionError, match="certificate verify failed"),
        tls_client(cluster, master.port, ssl_ca_certs=str(other.ca)) as wrong_ca,
    ):
        wrong_ca.ping()

    url = env["KEYGEN_DATABASE_URL"]
    plain_url = url.split("?")[0] + "?sslmode=disable"

    async def connect(dsn: str) -> None:
        conn = await asyncpg.connect(dsn, timeout=5)
        await conn.close()

    asyncio.run(connect(url))  # the printed URL itself connects
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption"):
        asyncio.run(connect(plain_url))
    with pytest.raises(OSError, match="certificate verify failed"):
        asyncio.run(connect(url.replace(env["KEYGEN_REDIS_SSL_CA_CERTS"], str(other.ca))))


def test_the_keygen_user_may_run_only_what_keygen_needs(
    cluster: LocalCluster, credentials: Credentials
) -> None:
    """On a data node ``keygen`` may touch only keygen:* keys and may not run admin commands;
    on a Sentinel it may ask but not order a failover or change the configuration."""
    master, sentinel = cluster.master(), cluster.sentinels[0]
    try:
        _refused_to_keygen(cluster, credentials, master.port, sentinel.port)
    finally:
        reset_acl_logs(cluster)  # the refusals above are logged; later tests expect none


def _refused_to_keygen(
    cluster: LocalCluster, credentials: Credentials, master: int, sentinel: int
) -> None:
    with tls_client(cluster, master, username="keygen", password=credentials.redis_keygen) as node:
        assert node.ping()
        node.set("keygen:secure-test", "1")
        node.delete("keygen:secure-test")
        for command in (("SET", "other", "1"), ("CONFIG", "GET", "*"), ("FLUSHALL",)):
            with pytest.raises(redis.exceptions.NoPermissionError):
                node.execute_command(*command)
    with tls_client(
        cluster, sentinel, username="keygen", password=credentials.sentinel_keygen
    ) as watcher:
        assert watcher.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster")
        for command in (("SENTINEL", "FAILOVER", "mymaster"), ("SENTINEL", "RESET", "*")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                watcher.execute_command(*command)


def test_the_service_allocates_from_redis_over_tls_as_keygen(
    cluster: LocalCluster, env: dict[str, str], service: ServeProcess, scratch: Path
) -> None:
    """The service on the cluster's environment serves from redis_sentinel with every layer
    healthy and the Sentinels' quorum seen, `keygen config check` passes, and no command it
    ran was refused by an ACL."""
    assert allocate(service)["source"] == "redis_sentinel"
    health = httpx.get(f"{service.url}/health", timeout=10).json()
    assert health["redis_health"] == health["postgresql_health"] == "healthy", health
    assert health["redis"]["sentinel_quorum"] is True
    result = keygen(
        "config", "check", "--json", env={**env, "KEYGEN_DATA_DIR": str(scratch / "check")}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert refused_acl_entries(cluster) == []


def test_a_backup_reads_the_ledger_and_the_leases_as_keygen(
    cluster: LocalCluster, env: dict[str, str], service: ServeProcess, scratch: Path
) -> None:
    """`keygen backup` dumps the ledger with pg_dump over verify-full TLS as the keygen role
    and reads the leases after a BGSAVE as the keygen Redis user."""
    allocate(service)  # a lease in Redis
    out = scratch / "backup"
    result = keygen("backup", "--out", str(out), env={**env, "KEYGEN_DATA_DIR": str(scratch)})
    assert result.returncode == 0, result.stdout + result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["ledger"] == "postgresql" and manifest["redis_leases"] >= 1, manifest
    assert refused_acl_entries(cluster) == []


def test_a_wrong_redis_password_falls_back_and_is_never_shown(
    env: dict[str, str], credentials: Credentials, scratch: Path
) -> None:
    """With a wrong data-node password Redis refuses the login; the service allocates from
    PostgreSQL (200, never 500), reports Redis unhealthy, and neither the wrong password nor
    any real one appears in /health, /metrics or its log."""
    wrong = "wrong-" + credentials.redis_keygen[::-1]
    log = scratch / "wrong-password.log"
    server = ServeProcess({**env, "KEYGEN_REDIS_PASSWORD": wrong}, log=log).start()
    try:
        assert allocate(server)["source"] == "postgresql"
        health = httpx.get(f"{server.url}/health", timeout=10)
        assert health.status_code == 200
        assert health.json()["redis_health"] == "unhealthy"
        redis_layer = next(x for x in health.json()["layers"] if x["source"] == "redis_sentinel")
        assert "invalid username-password pair" in str(redis_layer["error"]), redis_layer
        shown = [
            health.text,
            httpx.get(f"{server.url}/metrics", timeout=10).text,
            httpx.get(f"{server.url}/metrics", headers={"Accept": "text/plain"}, timeout=10).text,
        ]
    finally:
        server.stop()
    shown.append(log.read_text())
    secrets = [wrong, credentials.redis_keygen, credentials.sentinel_keygen]
    secrets.append(credentials.postgres_keygen)
    for text in shown:
        for secret in secrets:
            assert secret not in text


def test_a_failover_on_the_secure_topology_keeps_serving_from_redis(
    cluster: LocalCluster, service: ServeProcess
) -> None:
    """SIGKILL of the master: the Sentinels (authenticating to the nodes over TLS) promote a
    replica, the service is back on redis_sentinel through the new master, and no range was
    handed out twice."""
    seen: list[dict[str, Any]] = [allocate(service)]
    old = cluster.master()
    old.kill(signal.SIGKILL)
    new = cluster.wait_for_failover(old, DEADLINE)
    assert new is not old
    wait_for(
        lambda: allocated_by(service, "redis_sentinel", seen),
        "the service to serve from the new master",
    )
    seen.append(allocate(service))
    verdict = check(Record.from_json(body) for body in seen)
    assert verdict.ok, verdict.summary()
    assert refused_acl_entries(cluster) == []


def test_with_redis_stopped_the_service_allocates_from_postgresql_over_tls(
    cluster: LocalCluster, service: ServeProcess
) -> None:
    """Every data node stopped: the service serves from PostgreSQL, reached with
    sslmode=verify-full as the keygen role, and /health says the ledger is healthy. (Requests
    of a million IDs: more than the Redis segments on hand, which would serve smaller ones.)"""
    for node in cluster.redis_nodes:
        node.stop()
    seen: list[dict[str, Any]] = []
    wait_for(
        lambda: allocated_by(service, "postgresql", seen, size=1_000_000),
        "a PostgreSQL allocation",
    )
    health = httpx.get(f"{service.url}/health", timeout=10).json()
    assert health["postgresql_health"] == "healthy"
    assert health["redis_health"] == "unhealthy"
    assert "sslmode=verify-full" in health["postgresql"]["url"]
    assert health["postgresql"]["url"].startswith("postgresql://keygen:***@")
