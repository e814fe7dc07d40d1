"""The short chaos schedule, as CI runs it: every fault kind once, the overlapping pairs too,
under load against a real topology, then the checker over every acknowledged range."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from rich.console import Console

from keygen.chaos.cli import ChaosOptions
from keygen.chaos.faults import KNOWN_KINDS
from keygen.chaos.run import run_chaos

pytestmark = [pytest.mark.chaos, pytest.mark.e2e]


@pytest.mark.timeout(600)
def test_short_schedule_no_duplicates_no_unexpected_failures() -> None:
    """Every fault kind and pair runs once under load; no ID is acknowledged twice, and no
    request fails outside the windows where every layer was down."""
    # Not pytest's tmp_path: PostgreSQL runs as its own user, which cannot enter a 0700 dir.
    out = Path(tempfile.mkdtemp(prefix="keygen-chaos-"))
    out.chmod(0o755)
    run = run_chaos(
        ChaosOptions(
            schedule="short",
            seed=0,
            rate=150,
            out=out,
            faults=list(KNOWN_KINDS),
        ),
        Console(stderr=True, force_terminal=False),
    )
    report = run.report
    summary = (
        f"{report['checker']['summary']}; failures outside all-down windows: "
        f"{report['failures_outside_by_cause']} / by window: "
        + str([(f["label"], f["failures_by_cause"]) for f in report["faults"] if f["failed"]])
    )
    assert report["checker"]["ok"], summary
    assert report["checker"]["duplicate_ids"] == 0, summary
    assert report["unexpected_failures"] == 0, summary
    assert report["acknowledged"] > 1000, summary
    assert set(report["faults_by_kind"]) == set(KNOWN_KINDS), report["faults_by_kind"]
    errors = [(f["label"], f["error"]) for f in report["faults"] if f["error"]]
    assert not errors, errors
    assert run.passed
    assert (run.out / "report.md").read_text().startswith("# Chaos run: PASSED")
    shutil.rmtree(out)  # kept when anything above failed, for the post-mortem
