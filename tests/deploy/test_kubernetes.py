"""``deploy/kubernetes/``: every overlay renders with ``kubectl kustomize``, each object it
renders validates offline against the Kubernetes schemas, and the pods keep the promises
the service needs: probes on the minimal endpoints, a grace period that covers the drain,
non-root and read-only with writable volumes for the data and run dirs, budgets, policies
that let only Keygen reach Redis, and the same alert rules as ``deploy/prometheus/``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from keygen.config import Settings
from keygen.constants import DEFAULT_PORT
from tests.deploy.files import DEPLOY, KUBERNETES, OVERLAYS, venv_tool
from tests.support.tools import installed

#: The Kubernetes version whose schemas the objects must satisfy.
KUBERNETES_VERSION = "1.30"
#: Kinds of the Prometheus Operator, which the Kubernetes schemas do not cover.
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}
WORKLOADS = {"embedded": "StatefulSet", "production": "Deployment"}


def kustomize(overlay: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [venv_tool("kubectl"), "kustomize", str(KUBERNETES / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize(request.param)


@pytest.fixture(scope="module")
def production() -> list[dict[str, Any]]:
    return kustomize("production")


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def keygen_pod(objects: list[dict[str, Any]], overlay: str) -> dict[str, Any]:
    spec: dict[str, Any] = one(objects, WORKLOADS[overlay], "keygen")["spec"]["template"]["spec"]
    return spec


def config_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    data: dict[str, str] = next(
        o["data"]
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("keygen-config")
    )
    return data


def test_every_overlay_validates_against_the_kubernetes_schemas(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    """Every object an overlay renders passes kubernetes-validate, strictly (no unknown
    field), except the Prometheus Operator's kinds, which are checked below."""
    overlay, objects = rendered
    assert objects, overlay
    for obj in objects:
        if obj["kind"] in OPERATOR_KINDS:
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    assert all(
        o["metadata"].get("namespace") == "keygen" for o in objects if o["kind"] != "Namespace"
    )


def test_probes_are_the_minimal_endpoints(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """Readiness asks /health/ready and liveness /health/live (never /health, which shows
    every internal and needs the read scope once keys exist), on the named port the Service
    targets."""
    overlay, objects = rendered
    (container,) = keygen_pod(objects, overlay)["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
    assert container["ports"] == [
        {"name": "http", "containerPort": DEFAULT_PORT, "protocol": "TCP"}
    ]
    service = one(objects, "Service", "keygen")
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_grace_period_covers_prestop_and_the_drain(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    """terminationGracePeriodSeconds is at least the preStop pause plus the drain after
    SIGTERM (KEYGEN_BODY_TIMEOUT + ALLOCATION_TIMEOUT + 1 s, as the ConfigMap sets them)."""
    overlay, objects = rendered
    pod = keygen_pod(objects, overlay)
    env = config_env(objects)
    defaults = Settings()
    body = float(env.get("KEYGEN_BODY_TIMEOUT", defaults.body_timeout))
    allocation = float(env.get("ALLOCATION_TIMEOUT", defaults.allocation_timeout))
    (container,) = pod["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    drain = body + allocation + 1
    assert drain == 41
    assert pod["terminationGracePeriodSeconds"] >= float(command[1]) + drain


def test_pods_run_non_root_read_only_with_writable_state(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    """The pod runs as the image's numeric user, read-only, no privilege, no capability,
    with resources bounded; KEYGEN_DATA_DIR, /dev/shm (the run dir) and /tmp are volumes."""
    overlay, objects = rendered
    pod = keygen_pod(objects, overlay)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert set(container["resources"]) == {"requests", "limits"}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert set(mounts) == {config_env(objects)["KEYGEN_DATA_DIR"], "/dev/shm", "/tmp"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
    if overlay == "embedded":  # the SQLite ledger: a persistent volume, one replica
        workload = one(objects, "StatefulSet", "keygen")
        assert workload["spec"]["replicas"] == 1
        claims = [c["metadata"]["name"] for c in workload["spec"]["volumeClaimTemplates"]]
        assert claims == [mounts["/var/lib/keygen"]]


def test_the_two_pod_specs_agree() -> None:
    """The embedded and production pods differ only in the ledger's settings and the data
    volume: a change of probes, grace, security or resources is made in both."""
    pods = {overlay: keygen_pod(kustomize(overlay), overlay) for overlay in OVERLAYS}
    for key in ("terminationGracePeriodSeconds", "securityContext", "serviceAccountName"):
        assert pods["embedded"][key] == pods["production"][key], key
    embedded, production = (pods[o]["containers"][0] for o in OVERLAYS)
    for key in (
        "startupProbe",
        "livenessProbe",
        "readinessProbe",
        "lifecycle",
        "resources",
        "securityContext",
        "volumeMounts",
        "ports",
    ):
        assert embedded[key] == production[key], key


def test_production_runs_replicas_behind_a_budget(production: list[dict[str, Any]]) -> None:
    """Production runs several Keygen pods, rolls them one new pod ahead of each old one,
    and a PodDisruptionBudget keeps all but one of them (and of the Redis nodes and
    Sentinels) through voluntary disruptions."""
    deployment = one(production, "Deployment", "keygen")
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    budgets = {b["metadata"]["name"]: b for b in production if b["kind"] == "PodDisruptionBudget"}
    assert set(budgets) == {"keygen", "keygen-redis", "keygen-sentinel"}
    assert budgets["keygen"]["spec"]["selector"] == deployment["spec"]["selector"]
    for sts in ("keygen-redis", "keygen-sentinel"):
        assert one(production, "StatefulSet", sts)["spec"]["replicas"] == 3


def test_production_settings_name_the_sentinels_and_a_secret(
    production: list[dict[str, Any]],
) -> None:
    """The Sentinels are named by their stable DNS names with the original description's
    master name and quorum, and KEYGEN_DATABASE_URL comes from a Secret, never from the
    ConfigMap."""
    env = config_env(production)
    hosts = env["REDIS_SENTINEL_HOSTS"].split(",")
    assert hosts == [f"keygen-sentinel-{i}.keygen-sentinel:26379" for i in range(3)]
    assert env["REDIS_SENTINEL_MASTER_NAME"] == "mymaster"
    assert env["REDIS_SENTINEL_QUORUM"] == "2"
    assert "KEYGEN_DATABASE_URL" not in env
    secret = next(o for o in production if o["kind"] == "Secret")
    assert secret["metadata"]["name"].startswith("keygen-database")
    assert set(secret["data"]) == {"KEYGEN_DATABASE_URL"}
    (container,) = keygen_pod(production, "production")["containers"]
    refs = [next(iter(ref.values()))["name"] for ref in container["envFrom"]]
    assert secret["metadata"]["name"] in refs
    Settings.model_validate({k.lower(): v for k, v in env.items()})  # the values parse


def test_only_keygen_reaches_redis(production: list[dict[str, Any]]) -> None:
    """Ingress is denied by default; Redis and the Sentinels admit Keygen and each other
    only; Keygen's egress reaches DNS, Redis and PostgreSQL only."""
    policies = {
        p["metadata"]["name"]: p["spec"] for p in production if p["kind"] == "NetworkPolicy"
    }
    assert policies["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    redis = policies["keygen-redis"]
    assert redis["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "keygen-redis"}
    peers = [peer["podSelector"]["matchLabels"] for peer in redis["ingress"][0]["from"]]
    assert peers == [
        {"app.kubernetes.io/name": "keygen", "app.kubernetes.io/component": "server"},
        {"app.kubernetes.io/name": "keygen-redis"},
    ]
    egress = policies["keygen-egress"]["egress"]
    ports = sorted(port["port"] for rule in egress for port in rule["ports"])
    assert ports == [53, 53, 5432, 6379, 26379]
    for sts in ("keygen-redis", "keygen-sentinel"):
        labels = one(production, "StatefulSet", sts)["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "keygen-redis"


def test_prometheus_rule_is_the_alert_file(
    production: list[dict[str, Any]], tmp_path: Path
) -> None:
    """The PrometheusRule's groups are deploy/prometheus/alerts.yml's, the checked-in
    manifest is its generator's output, and promtool accepts the rules."""
    rule = one(production, "PrometheusRule", "keygen")
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]
    generator = KUBERNETES / "prometheusrule.py"
    check = subprocess.run(
        [sys.executable, str(generator), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(rule["spec"]))
    promtool = installed("promtool", "prometheus")
    result = subprocess.run(
        [promtool, "check", "rules", str(rules)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_service_monitor_scrapes_the_service(production: list[dict[str, Any]]) -> None:
    """The ServiceMonitor selects the keygen Service by its labels and scrapes its named
    port's /metrics."""
    monitor = one(production, "ServiceMonitor", "keygen")
    service = one(production, "Service", "keygen")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
