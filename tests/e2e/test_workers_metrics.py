"""``keygen serve --workers 2``: the figures are the instance's, whichever worker answers.

Every request here goes on a fresh connection, so the kernel spreads them over both workers
(a keep-alive connection would stay on one); the per-worker counter files in the run
directory show that both served, and every scrape, answered by either, says the total.
That run directory is the instance's for one start: a graceful stop removes it.
"""

from __future__ import annotations

import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from keygen.cluster.processes import children
from keygen.constants import SOURCE_SQLITE
from keygen.metrics.layout import COUNTED_SOURCES, LAYOUT
from tests.support.processes import ServeProcess
from tests.support.tools import installed

pytestmark = [pytest.mark.e2e]

WORKERS = 2
ALLOCATIONS = 40  # at least; more if the first ones all landed on one worker
SIZE = 7
SCRAPES = 6  # rounds of /health, JSON /metrics and text /metrics, at least
DEADLINE = 30.0

T = TypeVar("T")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def fresh(method: str, url: str, **options: Any) -> httpx.Response:
    """One request on a connection of its own, closed after the answer."""
    headers = {"Connection": "close", **options.pop("headers", {})}
    with httpx.Client(timeout=10) as http:
        return http.request(method, url, headers=headers, **options)


def wait_for(what: str, probe: Callable[[], tuple[bool, T]], timeout: float = DEADLINE) -> T:
    """Call ``probe`` until its first item is true; return its second. On the deadline, fail
    with the last thing it saw."""
    deadline = time.monotonic() + timeout
    while True:
        done, seen = probe()
        if done:
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s; last seen: {seen!r}")
        time.sleep(0.05)


def worker_of(health: dict[str, Any]) -> int:
    """The pid of the worker that answered: each names itself hostname-pid."""
    return int(str(health["instance_id"]).rsplit("-", 1)[1])


def run_dir_of(server: ServeProcess) -> Path:
    """The run directory ``keygen serve`` made for its workers: the one holding a worker's
    counter file (``counters-<pid>``), in /dev/shm or the temp dir."""
    assert server.proc is not None
    pids = [server.proc.pid, *children(server.proc.pid)]
    places = [Path("/dev/shm"), Path(tempfile.gettempdir())]

    def find() -> tuple[bool, Path | None]:
        for place in places:
            for pid in pids:
                for found in place.glob(f"keygen-run-*/counters-{pid}"):
                    return True, found.parent
        return False, None

    run_dir = wait_for(f"a run directory with the counters of one of {pids} in {places}", find)
    assert run_dir is not None
    return run_dir


def served_by_worker(run_dir: Path) -> dict[int, int]:
    """Successful allocations from the SQLite ledger, per worker, read from each worker's
    own shared-memory counter file."""
    slot = LAYOUT.allocated + COUNTED_SOURCES.index(SOURCE_SQLITE)
    served = {}
    for path in run_dir.glob("counters-*"):
        data = path.read_bytes()
        (served[int(path.name.split("-")[1])],) = struct.unpack_from(
            "<q", data, LAYOUT.HEADER_BYTES + 8 * slot
        )
    return served


def samples(text: str) -> Samples:
    """Every sample of a Prometheus exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scraped: Samples, name: str, **labels: str) -> float | None:
    return scraped.get((name, frozenset(labels.items())))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServeProcess]:
    """``keygen serve --workers 2`` on the embedded SQLite ledger, a probe every 0.2 s."""
    env = {"KEYGEN_DATA_DIR": str(tmp_path / "data"), "KEYGEN_PROBE_INTERVAL": "0.2"}
    process = ServeProcess(env, workers=WORKERS, log=tmp_path / "serve.log")
    try:
        yield process.start()
    finally:
        process.stop()  # SIGTERM: it removes its run directory (SIGKILL after 30 s)


def test_one_scrape_counts_every_worker_exactly(server: ServeProcess) -> None:
    """With two workers, N allocations on fresh connections spread over both, and every
    scrape (Prometheus text that promtool accepts, JSON /metrics, /health), whichever worker
    answers it, reports exactly N, two workers, N 200s and the one rejected request."""
    run_dir = run_dir_of(server)
    answered: dict[int, int] = {}

    def both_workers_see_both() -> tuple[bool, dict[int, int]]:
        health = fresh("GET", f"{server.url}/health").json()
        answered[worker_of(health)] = health["workers"]
        return len(answered) == WORKERS and set(answered.values()) == {WORKERS}, answered

    wait_for("both workers answering, each counting 2 workers", both_workers_see_both)

    rejected = fresh("POST", f"{server.url}/allocate", json={"size": 0})
    assert rejected.status_code == 422, rejected.text
    assert rejected.json()["error"]["code"] == "invalid_request"

    made = 0

    def allocate_until_both_served() -> tuple[bool, dict[int, int]]:
        nonlocal made
        for _ in range(ALLOCATIONS if made == 0 else 10):
            response = fresh("POST", f"{server.url}/allocate", json={"size": SIZE})
            assert response.status_code == 200, response.text
            assert response.json()["source"] == SOURCE_SQLITE
            made += 1
        per_worker = served_by_worker(run_dir)
        return len(per_worker) == WORKERS and all(per_worker.values()), per_worker

    per_worker = wait_for("allocations served by both workers", allocate_until_both_served)
    n = made
    assert sum(per_worker.values()) == n, per_worker

    promtool = installed("promtool", "prometheus")
    answering: set[int] = set()
    rounds = 0
    while len(answering) < WORKERS or rounds < SCRAPES:
        rounds += 1
        assert rounds <= 100, f"100 rounds of fresh connections reached only workers {answering}"
        text = fresh("GET", f"{server.url}/metrics", headers={"Accept": "text/plain"})
        assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
        scraped = samples(text.text)
        figures = {
            "allocations": value(
                scraped, "keygen_allocations_total", outcome="success", source=SOURCE_SQLITE
            ),
            "failures": value(scraped, "keygen_allocations_total", outcome="failure", source=""),
            "ids": value(scraped, "keygen_ids_allocated_total"),
            "workers": value(scraped, "keygen_workers"),
            "200s": value(
                scraped, "keygen_http_responses_total", endpoint="/allocate", status="200"
            ),
            "422s": value(
                scraped, "keygen_http_responses_total", endpoint="/allocate", status="422"
            ),
            "invalid_request": value(
                scraped, "keygen_rejected_requests_total", code="invalid_request"
            ),
            "latency count": value(scraped, "keygen_allocation_duration_seconds_count"),
        }
        expected = {
            "allocations": n,
            "failures": 0,
            "ids": n * SIZE,
            "workers": WORKERS,
            "200s": n,
            "422s": 1,
            "invalid_request": 1,
            "latency count": n,  # rejected before the allocator: not timed
        }
        assert figures == expected, f"scrape {rounds}: {figures}, expected {expected}"
        assert f'keygen_allocations_total{{outcome="success",source="sqlite"}} {n}.0' in text.text
        assert f"keygen_workers {WORKERS}.0" in text.text.splitlines()

        checked = subprocess.run(
            [promtool, "check", "metrics"],
            input=text.text,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert checked.returncode == 0 and not checked.stdout.strip(), (
            f"promtool check metrics (exit {checked.returncode}): {checked.stdout}{checked.stderr}"
        )

        document = fresh("GET", f"{server.url}/metrics").json()
        assert document["metrics"]["total_allocations"] == n, document
        assert document["metrics"]["allocations_by_source"] == {SOURCE_SQLITE: n}, document
        assert document["metrics"]["ids_allocated"] == n * SIZE, document
        assert document["metrics"]["failed_allocations"] == 0, document

        health = fresh("GET", f"{server.url}/health").json()
        answering.add(worker_of(health))
        assert health["workers"] == WORKERS, health
        assert health["metrics"]["total_allocations"] == n, health["metrics"]
        assert health["metrics"]["ids_allocated"] == n * SIZE, health["metrics"]
    assert answering == set(per_worker), (answering, per_worker)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_graceful_stop_removes_the_run_directory(workers: int, tmp_path: Path) -> None:
    """Stopped with SIGTERM, as a service manager stops it, ``keygen serve`` removes the run
    directory its workers counted in (a fresh one is made at every start)."""
    env = {"KEYGEN_DATA_DIR": str(tmp_path / "data"), "KEYGEN_PROBE_INTERVAL": "0.2"}
    process = ServeProcess(env, workers=workers, log=tmp_path / "serve.log")
    try:
        process.start()
        run_dir = run_dir_of(process)
        proc = process.proc
        assert proc is not None
        process.stop()
        left = sorted(p.name for p in run_dir.iterdir()) if run_dir.exists() else None
        assert left is None, (
            f"SERVICE BUG: `keygen serve --workers {workers}` exited on SIGTERM (status "
            f"{proc.returncode}) leaving its run directory {run_dir} with {left}: uvicorn "
            "re-raises the captured SIGTERM as uvicorn.run returns (Server.capture_signals), "
            "so the process dies before keygen.cli._run_dir's finally can remove it"
        )
    finally:
        process.kill()  # only if it is still running
