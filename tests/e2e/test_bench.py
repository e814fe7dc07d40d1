"""``keygen bench`` against real servers: the rate it keeps, its report, a stall it must not
hide, and one failover scenario measured on the real local cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from keygen.bench.failover import SCENARIOS, run_scenario
from keygen.bench.generator import Step, Timeline, run_step
from keygen.bench.targets import open_topology, start_bare
from tests.support.processes import ServeProcess, keygen, scratch_dir
from tests.support.tools import installed
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

RATE, DURATION = 200.0, 2.0


def test_a_short_run_keeps_the_offered_rate_and_reports_every_figure(tmp_path: Path) -> None:
    """200 req/s for 2 s against `keygen serve`: ~200 answered a second, all 2xx from
    sqlite, and the JSON file holds the figures the table shows."""
    server = ServeProcess({"KEYGEN_DATA_DIR": str(tmp_path / "data")}, log=tmp_path / "serve.log")
    server.start()
    try:
        out = tmp_path / "bench.json"
        done = keygen(
            "bench",
            "--url",
            server.url,
            "--rates",
            f"{RATE:g}",
            "--duration",
            f"{DURATION:g}",
            "--no-saturate",
            "--no-bare",
            "--warmup",
            "0",
            "--json",
            str(out),
        )
    finally:
        server.kill()
    assert done.returncode == 0, done.stderr
    (step,) = json.loads(out.read_text())["allocation"]
    assert step["offered_rps"] == RATE
    assert step["rps"] == pytest.approx(RATE, rel=0.05)
    assert step["scheduled"] == step["ok"] == step["responses"] == RATE * DURATION
    assert step["success_rate"] == 1.0 and step["errors"] == {}
    assert step["statuses"] == {"200": RATE * DURATION}
    assert step["sources"] == {"sqlite": RATE * DURATION}
    latency = step["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert "| 200 req/s | keygen |" in done.stdout


def test_the_embedded_topology_is_measured_beside_the_bare_app(tmp_path: Path) -> None:
    """`--topology embedded` starts its own service and the bare app, measures both at the
    same rate, and prints them next to each other."""
    out = tmp_path / "bench.json"
    done = keygen(
        "bench",
        "--topology",
        "embedded",
        "--rates",
        "100",
        "--duration",
        "1",
        "--no-saturate",
        "--warmup",
        "0.2",
        "--json",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    steps = {s["target"]: s for s in json.loads(out.read_text())["allocation"]}
    assert set(steps) == {"keygen (embedded)", "bare app"}
    assert steps["keygen (embedded)"]["sources"] == {"sqlite": 100}
    assert steps["bare app"]["sources"] == {"bare": 100}
    assert all(s["success_rate"] == 1.0 for s in steps.values())
    assert "|  | bare app | 100 |" in done.stdout
    assert "| original description | 100 | 2.1 ms |" in done.stdout


def test_a_target_that_does_not_answer_is_named(tmp_path: Path) -> None:
    """Nothing listening: exit 1 and a message that names the URL."""
    done = keygen("bench", "--url", "http://127.0.0.1:9", "--no-bare", "--rates", "10")
    assert done.returncode == 1
    assert "http://127.0.0.1:9 does not answer" in done.stderr


def test_a_stall_shows_in_p99_and_max_as_long_as_it_lasted(tmp_path: Path) -> None:
    """SIGSTOP the server for 0.5 s: every request scheduled in the stall is late by what
    is left of it, so p99 and max reach the stall; timed from the write instead (one
    connection: one request in flight saw it), p99 would hide it."""
    with ExitStack() as stack:
        bare = start_bare(tmp_path, stack)
        assert bare.pid is not None
        pid, timeline, stall = bare.pid, Timeline(), {}

        def pause() -> None:
            wait_for(lambda: len(timeline.times) >= 50, 10, "the run to be under way")
            os.kill(pid, signal.SIGSTOP)
            stall["from"] = time.monotonic()
            time.sleep(0.5)  # the fault: the server stalls this long
            os.kill(pid, signal.SIGCONT)
            stall["to"] = time.monotonic()

        pauser = threading.Thread(target=pause)
        pauser.start()
        result = run_step(Step(bare.url, RATE, DURATION, connections=1), timeline)
        pauser.join()
    stalled = stall["to"] - stall["from"]
    assert result.ok == result.scheduled == RATE * DURATION  # nothing lost, all late
    assert result.latency.max_us / 1e6 >= stalled - 1 / RATE
    assert result.latency.percentile(0.99) >= stalled - 5 / RATE
    assert result.service.percentile(0.99) < stalled / 5


@pytest.fixture
def scratch() -> Iterator[Path]:
    with scratch_dir("keygen-bench-test-") as path:
        yield path


def test_a_master_kill_is_detected_failed_over_and_recovered(scratch: Path) -> None:
    """kill -9 the Redis master under 200 req/s (Sentinels' down-after 1 s): a Sentinel
    flags it, another node is promoted, the service comes back to redis_sentinel, and
    the PostgreSQL fallback keeps every request answered."""
    with ExitStack() as stack:
        topology = open_topology("redis", scratch, stack, lambda _: None, down_after_ms=1000)
        step = Step(topology.target.url, RATE, None, connections=8)
        row = run_scenario(SCENARIOS[0], topology, step, lambda _: None)
    assert row.error is None
    assert row.sdown is not None and 0.9 <= row.sdown < 5
    assert row.promoted is not None and row.sdown < row.promoted < 15
    assert row.back is not None and row.back >= row.promoted
    assert row.failed == 0
    assert row.requests >= RATE * row.back
    assert row.sources["redis_sentinel"] > 0 and row.sources["postgresql"] > 0
    assert row.longest_gap < 2.0
    assert row.steps[0][1].startswith("SIGKILL redis-")


WRK_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "wrk" / "post_allocate.lua"


def test_on_one_connection_the_times_agree_with_wrk(tmp_path: Path) -> None:
    """On the bare app, one connection: wrk's closed loop, then keygen bench at half wrk's
    rate; each request's time from its write (what wrk measures) agrees to 0.5 ms at p50,
    and the generator's own lateness stays under a millisecond (it prints both)."""
    with ExitStack() as stack:
        bare = start_bare(tmp_path, stack)
        wrk = subprocess.run(
            [
                installed("wrk", "wrk"),
                "-t1",
                "-c1",
                "-d2s",
                "-s",
                str(WRK_SCRIPT),
                f"{bare.url}/allocate",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        (line,) = [x for x in wrk.stdout.splitlines() if x.startswith("WRK_JSON ")]
        theirs = json.loads(line.removeprefix("WRK_JSON "))
        wrk_rate = theirs["requests"] / (theirs["duration_us"] / 1e6)
        rate = min(5000.0, wrk_rate / 2)
        ours = run_step(Step(bare.url, rate, DURATION, connections=1))
    wrk_p50, wrk_p99 = theirs["latency_us"]["p50"] / 1e3, theirs["latency_us"]["p99"] / 1e3
    our_p50, our_p99 = ours.service.percentile(0.5) * 1e3, ours.service.percentile(0.99) * 1e3
    print(
        f"wrk -c1: {wrk_rate:,.0f} req/s, p50 {wrk_p50:.3f} ms, p99 {wrk_p99:.3f} ms; "
        f"keygen bench at {rate:,.0f} req/s: p50 {our_p50:.3f} ms, p99 {our_p99:.3f} ms "
        f"(from the schedule: p50 {ours.latency.percentile(0.5) * 1e3:.3f} ms)"
    )
    assert theirs["errors"]["status"] == 0 and ours.ok == ours.scheduled
    assert abs(our_p50 - wrk_p50) < 0.5
    assert ours.send_lag.percentile(0.5) < 0.001
