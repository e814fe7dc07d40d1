"""``deploy/docker-compose.yml`` describes the same topology as ``keygen cluster up
--base-port 6379``: checked by parsing it (no Docker engine runs here) and comparing it with
what ``LocalCluster`` generates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from keygen.cluster import DEFAULT_BASE_PORT, LocalCluster
from keygen.cluster.postgres import SERVER_SETTINGS
from keygen.constants import DEFAULT_PORT

COMPOSE = Path(__file__).parents[2] / "deploy" / "docker-compose.yml"
DOCKERFILE = COMPOSE.with_name("Dockerfile")
#: Directives naming paths on the host: they differ by design (Docker keeps data in /data).
PATH_DIRECTIVES = {"dir", "pidfile", "logfile"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> LocalCluster:
    """The launcher's plan for the seed's ports; nothing is started."""
    return LocalCluster(tmp_path_factory.mktemp("plan"), base_port=DEFAULT_BASE_PORT)


def _without_paths(lines: list[str]) -> list[str]:
    return [line for line in lines if line.split()[0] not in PATH_DIRECTIVES]


def _config(compose: dict[str, Any], name: str) -> list[str]:
    content: str = compose["configs"][f"{name}.conf"]["content"]
    return content.splitlines()


def test_services_are_the_launchers_processes(
    compose: dict[str, Any], cluster: LocalCluster
) -> None:
    """Compose runs exactly the launcher's processes plus the service, all on the host
    network, each data node and Sentinel with its own volume."""
    names = [node.name for node in cluster.nodes()]
    assert set(compose["services"]) == {*names, "keygen"}
    for name in names:
        service = compose["services"][name]
        assert service["network_mode"] == "host"
        if name != "postgres":
            assert service["volumes"] == [f"{name}:/data"]
    assert set(compose["volumes"]) == {*names, "keygen"}


def test_data_node_configs_match_the_launcher(
    compose: dict[str, Any], cluster: LocalCluster
) -> None:
    """Each Redis config equals the one the launcher writes (ports, appendonly, appendfsync,
    replicaof), paths aside; the data lives in the volume."""
    for node in cluster.redis_nodes:
        lines = _config(compose, node.name)
        assert _without_paths(lines) == _without_paths(node.config_lines())
        assert 'dir "/data"' in lines and "appendonly yes" in lines
        service = compose["services"][node.name]
        assert service["configs"] == [
            {"source": f"{node.name}.conf", "target": "/etc/keygen/redis.conf"}
        ]
        assert "redis-server /data/redis.conf" in service["entrypoint"][-1]
        assert str(node.port) in service["healthcheck"]["test"]


def test_sentinel_configs_match_the_launcher(
    compose: dict[str, Any], cluster: LocalCluster
) -> None:
    """Each Sentinel config equals the launcher's: same port, ``sentinel monitor mymaster
    127.0.0.1 6379 2``, down-after, failover-timeout, parallel-syncs; started with
    ``--sentinel`` from a writable copy, since Sentinel rewrites it."""
    monitor = (
        f"sentinel monitor {cluster.master_name} 127.0.0.1 {cluster.ports.redis[0]} "
        f"{cluster.quorum}"
    )
    assert monitor == "sentinel monitor mymaster 127.0.0.1 6379 2"
    for sentinel in cluster.sentinels:
        lines = _config(compose, sentinel.name)
        assert _without_paths(lines) == _without_paths(sentinel.config_lines())
        assert monitor in lines
        assert f"sentinel down-after-milliseconds mymaster {cluster.down_after_ms}" in lines
        entrypoint = compose["services"][sentinel.name]["entrypoint"][-1]
        assert "cp /etc/keygen/sentinel.conf /data/sentinel.conf" in entrypoint
        assert entrypoint.rstrip().endswith("redis-server /data/sentinel.conf --sentinel")


def test_ports_follow_the_documented_scheme(compose: dict[str, Any], cluster: LocalCluster) -> None:
    """Redis 6379-6381, Sentinels 26379-26381, PostgreSQL 6382, the service 8010: in the
    configs, the PostgreSQL service and the service's command."""
    assert cluster.ports.redis == (6379, 6380, 6381)
    assert cluster.ports.sentinels == (26379, 26380, 26381)
    assert cluster.ports.postgres == 6382
    for node in [*cluster.redis_nodes, *cluster.sentinels]:
        assert f"port {node.port}" in _config(compose, node.name)
    postgres = compose["services"]["postgres"]
    assert postgres["environment"]["PGPORT"] == str(cluster.ports.postgres)
    assert str(cluster.ports.postgres) in postgres["healthcheck"]["test"]
    command = compose["services"]["keygen"]["command"]
    assert command[-1] == str(DEFAULT_PORT)


def test_postgres_is_the_launchers_ledger(compose: dict[str, Any], cluster: LocalCluster) -> None:
    """The PostgreSQL service has the launcher's database, user and durability settings,
    listening on 127.0.0.1 only."""
    assert cluster.postgres is not None
    postgres = compose["services"]["postgres"]
    assert postgres["environment"]["POSTGRES_DB"] == cluster.postgres.database
    assert postgres["environment"]["POSTGRES_USER"] == "postgres"
    options = dict(opt.split("=", 1) for opt in postgres["command"][2::2])
    for key in ("fsync", "synchronous_commit", "full_page_writes", "max_connections"):
        assert options[key] == SERVER_SETTINGS[key]
    assert options["listen_addresses"] == SERVER_SETTINGS["listen_addresses"].strip("'")


def test_service_environment_is_the_launchers(
    compose: dict[str, Any], cluster: LocalCluster
) -> None:
    """The service gets exactly the environment `keygen cluster up` prints, and is built
    from deploy/Dockerfile."""
    service = compose["services"]["keygen"]
    environment = service["environment"]
    assert {key: environment[key] for key in cluster.env()} == cluster.env()
    assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert DOCKERFILE.exists()
    assert '"keygen", "serve"' in DOCKERFILE.read_text()
