"""Command-line tools some tests need, installed from Debian's packages when missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def installed(program: str, package: str) -> str:
    """The path of ``program``, after ``scripts/apt-install package`` if it is missing; the
    test fails (never skips) when it cannot be had."""
    found = shutil.which(program)
    if found is None:
        result = subprocess.run(
            [str(ROOT / "scripts" / "apt-install"), package],
            capture_output=True,
            text=True,
            timeout=900,
        )
        found = shutil.which(program)
        if found is None:
            pytest.fail(
                f"{program} is missing and `scripts/apt-install {package}` did not bring it "
                f"(exit {result.returncode}): {result.stderr.strip()[-500:]}"
            )
    return found
