"""``deploy/docker-compose.yml`` against the Compose specification's schema, its graceful
stop against the service's drain, and its stated minimum version against Debian's
``docker-compose`` 1.29.2: that version refuses the file for the two features the header
names and for nothing else, and would ignore the configs even in the form it accepts."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from keygen.config import Settings
from tests.deploy.files import COMPOSE, DEPLOY, venv_tool
from tests.support.tools import installed

#: What needs a newer Compose than Debian's, as the file's header says.
NEWER_FEATURES = ("configs.", "'name'")


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in sorted(units, key=len, reverse=True):
        if duration.endswith(unit):
            return float(duration[: -len(unit)]) * units[unit]
    raise AssertionError(f"not a duration: {duration}")


def _docker_compose_config(directory: Path, file: Path) -> subprocess.CompletedProcess[str]:
    program = installed("docker-compose", "docker-compose")
    return subprocess.run(
        [program, "-f", str(file), "config", "--quiet"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_valid_against_the_compose_specification() -> None:
    """check-jsonschema's vendored Compose specification schema accepts the file."""
    result = subprocess.run(
        [venv_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok -- validation done" in result.stdout


def test_stop_grace_period_covers_the_drain(compose: dict[str, Any]) -> None:
    """Compose waits longer than the longest drain after SIGTERM (KEYGEN_BODY_TIMEOUT +
    ALLOCATION_TIMEOUT + 1 s) before it kills the service."""
    settings = Settings()
    drain = settings.body_timeout + settings.allocation_timeout + 1
    assert _seconds(compose["services"]["keygen"]["stop_grace_period"]) > drain


def test_the_header_states_the_minimum_version() -> None:
    """The file says, at the top, which Compose it needs and why."""
    header = COMPOSE.read_text().split("\nname:", 1)[0]
    assert "Needs Docker Compose 2.23.1 or newer" in header


def test_debians_compose_refuses_only_the_newer_features(tmp_path: Path) -> None:
    """Debian's docker-compose 1.29.2 rejects the file only for inline config contents and
    the top-level name."""
    result = _docker_compose_config(DEPLOY, COMPOSE)
    assert result.returncode != 0
    complaints = [
        line for line in result.stderr.splitlines() if "does not match any of the regexes" in line
    ]
    assert complaints, result.stderr
    assert all(line.startswith(NEWER_FEATURES) for line in complaints), complaints


def test_without_the_newer_features_debians_compose_accepts_it_but_drops_the_configs(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """With the contents moved to files and no name, 1.29.2 accepts the file, and warns that
    it ignores `configs` outside a swarm: the nodes would start without their settings, so
    the older form would lose what the file describes (hence 2.23.1)."""
    older = dict(compose)
    del older["name"]
    older["configs"] = {}
    for name, config in compose["configs"].items():
        (tmp_path / name).write_text(config["content"])
        older["configs"][name] = {"file": f"./{name}"}
    services = {}
    for name, service in compose["services"].items():
        service = dict(service)
        if "build" in service:
            service["build"] = {**service["build"], "context": str(DEPLOY.parent)}
        service["volumes"] = [
            str(DEPLOY / spec[2:]) if spec.startswith("./") else spec
            for spec in service.get("volumes", [])
        ]
        services[name] = service
    older["services"] = services
    file = tmp_path / "docker-compose.yml"
    file.write_text(yaml.safe_dump(older))
    result = _docker_compose_config(tmp_path, file)
    assert result.returncode == 0, result.stderr
    assert "use the 'configs' key, which will be ignored" in result.stderr
