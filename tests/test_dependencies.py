"""The lock files in requirements/: in step with pyproject.toml, and what is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ROOT / "requirements"


def pins(lock: Path) -> dict[str, str]:
    """The lock's ``name==version`` lines whose markers hold for this interpreter."""
    joined = lock.read_text().replace("\\\n", " ")
    found: dict[str, str] = {}
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        requirement = Requirement(line.split(" --hash", 1)[0])
        if requirement.marker is None or requirement.marker.evaluate():
            (spec,) = requirement.specifier
            assert spec.operator == "==", f"{lock.name}: {line.split()[0]} is not pinned"
            found[canonicalize_name(requirement.name)] = spec.version
    return found


def lock_check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(root / "scripts" / "lock"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_locks_are_in_step_with_pyproject() -> None:
    """scripts/lock --check finds every lock as scripts/lock would write it."""
    result = lock_check(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_lock_check_fails_when_pyproject_gains_a_dependency(tmp_path: Path) -> None:
    """A dependency added to pyproject.toml and not locked makes scripts/lock --check fail,
    naming the package and the command that fixes it."""
    shutil.copytree(ROOT / "requirements", tmp_path / "requirements")
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    (tmp_path / ".tools").symlink_to(ROOT / ".tools")
    (tmp_path / "src" / "keygen").mkdir(parents=True)
    shutil.copy(ROOT / "src" / "keygen" / "__init__.py", tmp_path / "src" / "keygen")
    shutil.copy(ROOT / "README.md", tmp_path)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '    "stamina>=25.2",\n' in pyproject
    pyproject = pyproject.replace('    "stamina>=25.2",\n', '    "stamina>=25.2",\n    "six",\n')
    (tmp_path / "pyproject.toml").write_text(pyproject)
    result = lock_check(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "+six==" in result.stderr
    assert "run scripts/lock" in result.stderr
    # The check wrote nothing: the copy's locks are as they were.
    assert (tmp_path / "requirements" / "runtime.txt").read_text() == (
        LOCKS / "runtime.txt"
    ).read_text()


def test_what_is_installed_is_exactly_what_the_development_lock_pins() -> None:
    """Every package in this environment is pinned by requirements/dev.txt at the version
    installed, and every pin that applies here is installed (Keygen itself aside)."""
    assert sys.prefix != sys.base_prefix, "the tests run in scripts/install's .venv"
    locked = pins(LOCKS / "dev.txt")
    installed = {
        str(canonicalize_name(dist.metadata["Name"])): dist.version
        for dist in metadata.distributions()
        if os.path.commonpath([str(dist.locate_file("")), sys.prefix]) == sys.prefix
    }
    installed.pop("keygen")
    assert installed == locked


def test_the_runtime_lock_is_the_development_locks_runtime_part() -> None:
    """The runtime set and the image's set pin the same versions as the development set, so
    that the service is tested with the versions it is served with."""
    development = pins(LOCKS / "dev.txt")
    for name in ("runtime.txt", "image.txt"):
        runtime = pins(LOCKS / name)
        assert {"fastapi", "uvicorn", "redis", "asyncpg"} <= runtime.keys()
        assert {k: development[k] for k in runtime} == runtime, name
