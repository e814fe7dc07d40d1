"""Stopping a chaos run early: SIGTERM (a CI job's timeout, `kill`) stops every process the
run started and still writes the report of the run so far."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from keygen.cluster import processes as proc

pytestmark = [pytest.mark.chaos, pytest.mark.e2e]


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in proc.children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def started_by_run(pid: int, out: Path) -> dict[int, int | None]:
    """Every process the run started, with its start time (a pid alone may be reused):
    its descendants, and PostgreSQL, which ``pg_ctl`` detaches (its command line names the
    data directory under ``out``)."""
    pids = descendants(pid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        candidate = int(stat.parent.name)
        if any(str(out) in part for part in proc.cmdline(candidate)):
            pids.add(candidate)
    return {p: proc.start_time(p) for p in pids}


def _stop_left_behind(out: Path, started: dict[int, int | None]) -> None:
    """The cluster by its recorded pids, then whatever else the run had started."""
    subprocess.run(
        [sys.executable, "-m", "keygen", "cluster", "down", "--dir", str(out / "cluster")],
        capture_output=True,
        timeout=60,
        check=False,
    )
    for pid, began in started.items():
        if proc.is_alive(pid) and proc.start_time(pid) == began:
            os.kill(pid, signal.SIGKILL)


def wait_for_acks(path: Path, count: int, timeout: float = 60) -> None:
    """Wait until the load has written ``count`` acknowledgements (the condition itself, not
    a guess of how long it takes on a loaded machine)."""
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            seen = path.read_bytes().count(b"\n")
        if seen >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{seen} of {count} acknowledgements in {path} after {timeout} s")


@pytest.mark.timeout(300)
def test_sigterm_stops_everything_and_writes_the_report() -> None:
    out = Path(tempfile.mkdtemp(prefix="keygen-chaos-"))
    out.chmod(0o755)  # PostgreSQL runs as its own user
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "keygen",
            "chaos",
            "--duration",
            "300",
            "--rate",
            "50",
            "--seed",
            "1",
            "--faults",
            "sentinel-kill",
            "--out",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    started: dict[int, int | None] = {}
    try:
        assert run.stderr is not None
        output = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = run.stderr.readline()
            output.append(line)
            if "load at" in line or not line:
                break
        assert any("load at" in line for line in output), "".join(output)
        wait_for_acks(out / "acks.jsonl", 20)  # so that the report has acknowledged ranges
        started = started_by_run(run.pid, out)
        kinds = " ".join(" ".join(proc.cmdline(p)) for p in started)
        assert "redis-server" in kinds and "postgres" in kinds and "serve" in kinds, kinds

        run.send_signal(signal.SIGTERM)
        rest = run.communicate(timeout=120)[1]
        assert run.returncode == 130, "".join(output) + rest
    finally:
        if run.poll() is None:  # it did not stop: neither may what it started outlive the test
            run.kill()
            run.wait()
            _stop_left_behind(out, started)
        if run.stderr is not None:
            run.stderr.close()  # after a timeout its pipe is still open

    still_running = [
        p for p, began in started.items() if proc.is_alive(p) and proc.start_time(p) == began
    ]
    assert still_running == [], [proc.cmdline(p) for p in still_running]
    report = json.loads((out / "report.json").read_text())
    assert report["meta"]["interrupted"]
    assert report["acknowledged"] > 0
    assert report["checker"]["ok"]
    assert (out / "report.md").read_text().startswith("# Chaos run: INTERRUPTED")
    shutil.rmtree(out)
