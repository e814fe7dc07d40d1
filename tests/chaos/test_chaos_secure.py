"""A short chaos schedule on the secure topology (``keygen chaos --secure``): TLS and ACLs on
every link, the proxies forwarding the encrypted bytes, then the checker over every
acknowledged range."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from rich.console import Console

from keygen.chaos.cli import ChaosOptions
from keygen.chaos.run import run_chaos

pytestmark = [pytest.mark.chaos, pytest.mark.e2e]

#: A failover (Sentinels authenticating to the nodes, replicas to the new master), both
#: partitions through the proxies, a ledger crash (the pool reconnecting over TLS) and a
#: Sentinel restarted with its ACL users: about 65 s of wall time.
KINDS = ["redis-master-kill", "partition-redis", "postgres-kill", "sentinel-kill",
         "partition-postgres"]  # fmt: skip


@pytest.mark.timeout(240)
def test_short_secure_schedule_no_duplicates_no_unexpected_failures() -> None:
    """Five fault kinds under load on the secure topology: no ID is acknowledged twice, no
    request fails, and Redis served most requests (the service really talked TLS to it)."""
    # Not pytest's tmp_path: PostgreSQL runs as its own user, which cannot enter a 0700 dir.
    out = Path(tempfile.mkdtemp(prefix="keygen-chaos-secure-"))
    out.chmod(0o755)
    run = run_chaos(
        ChaosOptions(schedule="short", seed=0, rate=150, out=out, faults=KINDS, secure=True),
        Console(stderr=True, force_terminal=False),
    )
    report = run.report
    summary = f"{report['checker']['summary']}; failures: {report['failures_outside_by_cause']}"
    assert report["checker"]["ok"], summary
    assert report["checker"]["duplicate_ids"] == 0, summary
    assert report["unexpected_failures"] == 0, summary
    assert report["acknowledged"] > 1000, summary
    assert report["sources"].get("redis_sentinel", 0) > report["acknowledged"] / 2, report[
        "sources"
    ]
    assert sorted(report["faults_by_kind"]) == sorted(KINDS), report["faults_by_kind"]
    assert "--secure" in report["meta"]["command"]
    assert run.passed
    shutil.rmtree(out)  # kept when anything above failed, for the post-mortem
