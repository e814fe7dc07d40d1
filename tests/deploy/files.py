"""Where the files under ``deploy/`` are, and how to read the Compose file's wiring."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
GRAFANA = DEPLOY / "grafana"
DASHBOARD_JSON = GRAFANA / "keygen-dashboard.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "keygen.yml"


@dataclass(frozen=True)
class Mount:
    """A service's volume in Compose's short syntax, ``source:target[:mode]``."""

    source: str
    target: str
    read_only: bool

    @classmethod
    def parse(cls, spec: str) -> Mount:
        source, target, *mode = spec.split(":")
        return cls(source, target, mode == ["ro"])

    @property
    def is_bind(self) -> bool:
        return self.source.startswith(("./", "../", "/"))

    @property
    def host_path(self) -> Path:
        """Where a bind mount's source is: Compose resolves it against the file's directory."""
        return (COMPOSE.parent / self.source).resolve()


def mounts(service: dict[str, Any]) -> list[Mount]:
    return [Mount.parse(spec) for spec in service.get("volumes", [])]


def host_file(service: dict[str, Any], container_path: str) -> Path:
    """The repository file a service sees at ``container_path`` through its bind mounts (the
    mount whose target is the longest prefix of the path)."""
    matches = [
        mount
        for mount in mounts(service)
        if mount.is_bind
        and (container_path == mount.target or container_path.startswith(mount.target + "/"))
    ]
    assert matches, f"nothing is mounted at {container_path}"
    mount = max(matches, key=lambda m: len(m.target))
    return mount.host_path / container_path[len(mount.target) :].lstrip("/")


def flag(command: list[str], name: str) -> str:
    """The value of ``--name=value`` or ``--name value`` in a command."""
    for index, arg in enumerate(command):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name:
            return command[index + 1]
    raise AssertionError(f"{name} not in {command}")


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


KUBERNETES = DEPLOY / "kubernetes"
OVERLAYS = ("embedded", "production")
DOCKERFILE = DEPLOY / "Dockerfile"


def venv_tool(name: str) -> str:
    """A command-line tool that the ``dev`` extra installs beside the interpreter (the
    kubectl, hadolint and check-jsonschema wheels); the test fails when it is missing."""
    import sys

    path = Path(sys.executable).parent / name
    assert path.is_file(), f"{name} is missing: scripts/install (the dev extra) installs it"
    return str(path)
