"""``deploy/docker-compose.yml`` describes the same topology as ``keygen cluster up
--base-port 6379``, plus Prometheus and Grafana wired to the configuration under ``deploy/``:
checked by parsing it (no Docker engine runs here) and comparing it with what ``LocalCluster``
generates and with the files it mounts."""

from __future__ import annotations

from typing import Any

import pytest

from keygen.cluster import DEFAULT_BASE_PORT, LocalCluster
from keygen.cluster.postgres import SERVER_SETTINGS
from keygen.constants import DEFAULT_PORT
from tests.deploy.files import (
    COMPOSE,
    DASHBOARD_JSON,
    DASHBOARD_PROVIDERS,
    DATASOURCES,
    PROMETHEUS_CONFIG,
    flag,
    host_file,
    mounts,
)

DOCKERFILE = COMPOSE.with_name("Dockerfile")
#: Directives naming paths on the host: they differ by design (Docker keeps data in /data).
PATH_DIRECTIVES = {"dir", "pidfile", "logfile"}
#: The services Compose runs beside the launcher's processes.
EXTRA_SERVICES = {"keygen", "prometheus", "grafana"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> LocalCluster:
    """The launcher's plan for the original description's default ports; nothing is started."""
    return LocalCluster(tmp_path_factory.mktemp("plan"), base_port=DEFAULT_BASE_PORT)


def _without_paths(lines: list[str]) -> list[str]:
    return [line for line in lines if line.split()[0] not in PATH_DIRECTIVES]


def _config(compose: dict[str, Any], name: str) -> list[str]:
    content: str = compose["configs"][f"{name}.conf"]["content"]
    return content.splitlines()


def test_services_are_the_launchers_processes(
    compose: dict[str, Any], cluster: LocalCluster
) -> None:
    """Compose runs exactly the launcher's processes plus the service, Prometheus and
    Grafana, all on the host network, each data node and Sentinel with its own volume."""
    names = [node.name for node in cluster.nodes()]
    assert set(compose["services"]) == {*names, *EXTRA_SERVICES}
    for name in compose["services"]:
        assert compose["services"][name]["network_mode"] == "host"
    for name in names:
        if name != "postgres":
            assert compose["services"][name]["volumes"] == [f"{name}:/data"]
    assert set(compose["volumes"]) == {*names, *EXTRA_SERVICES}


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


def test_monitoring_mounts_exist_in_the_repository(compose: dict[str, Any]) -> None:
    """Every file or directory Prometheus and Grafana bind-mount is in the repository, read
    only; their data lives in named volumes."""
    for name in ("prometheus", "grafana"):
        service = compose["services"][name]
        binds = [mount for mount in mounts(service) if mount.is_bind]
        assert binds, name
        for mount in binds:
            assert mount.host_path.exists(), f"{name} mounts {mount.source}, which is missing"
            assert mount.read_only, f"{name} mounts {mount.source} writable"
        named = {mount.source for mount in mounts(service) if not mount.is_bind}
        assert named == {name}


def test_prometheus_runs_the_shipped_configuration(compose: dict[str, Any]) -> None:
    """Prometheus reads deploy/prometheus/prometheus.yml (and so the rule files beside it),
    keeps its data in its volume and listens on 127.0.0.1:9090, and Compose waits for it to
    be ready."""
    service = compose["services"]["prometheus"]
    command = service["command"]
    assert host_file(service, flag(command, "--config.file")) == PROMETHEUS_CONFIG
    assert f"prometheus:{flag(command, '--storage.tsdb.path')}" in service["volumes"]
    assert flag(command, "--web.listen-address") == "127.0.0.1:9090"
    assert "http://127.0.0.1:9090/-/ready" in service["healthcheck"]["test"]


def test_prometheus_scrapes_the_compose_service(
    compose: dict[str, Any], prometheus_config: dict[str, Any]
) -> None:
    """The ``keygen`` job's target is the address the Compose service binds, and no
    Alertmanager is configured since Compose runs none."""
    command = compose["services"]["keygen"]["command"]
    address = f"{flag(command, '--host')}:{flag(command, '--port')}"
    (job,) = [job for job in prometheus_config["scrape_configs"] if job["job_name"] == "keygen"]
    assert job["static_configs"] == [{"targets": [address]}]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert "alertmanager" not in compose["services"]
    assert "alerting" not in prometheus_config


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard(
    compose: dict[str, Any], datasources: dict[str, Any], dashboard_providers: dict[str, Any]
) -> None:
    """Grafana gets the provisioning files, a default Prometheus data source at the address
    the Prometheus service listens on, and the generated dashboard in the directory its
    provider reads, which is also the home dashboard; it listens on 127.0.0.1 only."""
    service = compose["services"]["grafana"]
    provisioning = "/etc/grafana/provisioning"
    assert host_file(service, f"{provisioning}/datasources/prometheus.yml") == DATASOURCES
    assert host_file(service, f"{provisioning}/dashboards/keygen.yml") == DASHBOARD_PROVIDERS

    listen = flag(compose["services"]["prometheus"]["command"], "--web.listen-address")
    (source,) = datasources["datasources"]
    assert (source["type"], source["url"], source["isDefault"]) == (
        "prometheus",
        f"http://{listen}",
        True,
    )

    (provider,) = dashboard_providers["providers"]
    dashboard = f"{provider['options']['path']}/{DASHBOARD_JSON.name}"
    assert host_file(service, dashboard) == DASHBOARD_JSON
    environment = service["environment"]
    assert environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == dashboard
    assert environment["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"
    assert "grafana:/var/lib/grafana" in service["volumes"]
    assert service["depends_on"] == {"prometheus": {"condition": "service_healthy"}}
