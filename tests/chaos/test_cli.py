"""``keygen chaos``'s command line: a run that would prove nothing is refused up front."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.processes import keygen


def test_a_plan_without_a_fault_is_refused_before_anything_starts(tmp_path: Path) -> None:
    """--duration 30 leaves no room for a fault: exit 2 at once, saying what would work,
    instead of a run that reports PASSED having injected nothing."""
    started = time.monotonic()
    result = keygen("chaos", "--duration", "30", "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "leaves no room for a fault" in result.stderr
    assert "--duration 40 or more" in result.stderr and "PASSED" not in result.stdout
    assert time.monotonic() - started < 20  # no topology was started
