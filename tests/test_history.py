"""The history rings: a point a second and a point a minute, kept across restarts."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from keygen.history import FIELDS, History
from keygen.metrics import InstanceView
from keygen.metrics.counters import InstanceCounters
from keygen.metrics.layout import LAYOUT
from keygen.snapshots import LayerSnapshot, WorkerState


def view(allocated: int, failed: int = 0) -> InstanceView:
    counters = InstanceCounters()
    counters.ints[LAYOUT.allocated + 3] = allocated  # sqlite
    counters.ints[LAYOUT.failed] = failed
    counters.ints[LAYOUT.latency_buckets + 2] = allocated + failed  # at most 0.5 ms
    layers = [LayerSnapshot("sqlite", "healthy", "closed", 0.1, None)]
    state = WorkerState(1, 0.0, layers, [], 0, None, None, {})
    return InstanceView(counters, state, [state], [state])


def test_points_are_differences_per_second_and_survive_a_restart(tmp_path: Path) -> None:
    """Each point holds the second's rates and latency; a reopened history still has them."""
    history = History(tmp_path)
    assert history.try_lead()
    history.record(view(0), 1000.0)
    history.record(view(120, failed=30), 1001.0)
    history.record(view(120, failed=30), 1002.0)
    history.close()
    reopened = History(tmp_path)
    series = reopened.document(60, now=1002.0).series
    assert series["time"] == [1001.0, 1002.0]
    assert series["requests_per_second"] == [150.0, 0.0]
    assert series["rate_sqlite"] == [120.0, 0.0]
    assert series["error_rate"] == [0.2, None]  # no request in the second second
    assert series["latency_p95_ms"][0] is not None and 0.25 < series["latency_p95_ms"][0] <= 0.5
    assert series["layer_up_sqlite"] == [1.0, 1.0]
    assert series["layer_up_redis_sentinel"] == [None, None]  # not configured
    assert set(series) == {"time", *FIELDS}
    reopened.close()


def test_a_minute_point_is_written_when_a_minute_ends(tmp_path: Path) -> None:
    """Windows beyond an hour are served from the per-minute ring."""
    history = History(tmp_path)
    history.record(view(0), 60 * 1000 + 5.0)
    history.record(view(600), 60 * 1001 + 5.0)  # the next minute: 600 in 60 s
    document = history.document(2 * 3600, now=60 * 1001 + 10.0)
    assert document.step_seconds == 60
    assert document.series["requests_per_second"] == [10.0]
    history.close()


def test_only_one_process_leads(tmp_path: Path) -> None:
    """The history lock lets one recorder at a time; closing hands it over."""
    first, second = History(tmp_path), History(tmp_path)
    assert first.try_lead() and not second.try_lead()
    first.close()
    assert second.try_lead()
    second.close()


def test_the_history_is_bounded_on_disk(tmp_path: Path) -> None:
    """An hour of seconds and a day of minutes fit in fixed files of about a megabyte."""
    history = History(tmp_path)
    sizes = {path.name: path.stat().st_size for path in tmp_path.glob("history-*.bin")}
    assert set(sizes) == {"history-seconds.bin", "history-minutes.bin"}
    assert sum(sizes.values()) == 32 * 2 + 8 * (3600 + 1440) * (1 + len(FIELDS)) < 1_100_000
    for second in range(5000):  # more than an hour of points: the oldest are overwritten
        history.record(view(second), 10_000.0 + second)
    assert {p.name: p.stat().st_size for p in tmp_path.glob("history-*.bin")} == sizes
    assert len(history.document(3600, now=15_000.0).series["time"]) == 3600
    history.close()


@pytest.mark.anyio
@pytest.mark.parametrize("window", ["abc", "15x", "-1m", "1e400", ""])
async def test_a_window_that_is_no_duration_is_a_422(
    client: httpx.AsyncClient, window: str
) -> None:
    """GET /metrics/history refuses what is not a duration, in the JSON error shape."""
    response = await client.get("/metrics/history", params={"window": window})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


@pytest.mark.anyio
@pytest.mark.parametrize(("window", "seconds"), [("0", 10), ("5s", 10), ("25h", 86400)])
async def test_a_window_out_of_bounds_is_brought_to_the_bound(
    client: httpx.AsyncClient, window: str, seconds: int
) -> None:
    """A duration below 10 s or above 24 h is served as the nearest bound."""
    response = await client.get("/metrics/history", params={"window": window})
    assert response.status_code == 200 and response.json()["window_seconds"] == seconds


@pytest.mark.anyio
async def test_the_monitoring_documents_answer(client: httpx.AsyncClient) -> None:
    """/metrics/history, /alerts and /ledger answer with their documented shapes."""
    await client.post("/allocate", json={"size": 5, "namespace": "orders"})
    history = (await client.get("/metrics/history", params={"window": "1h"})).json()
    assert history["window_seconds"] == 3600 and history["step_seconds"] == 1
    assert set(history["series"]) == {"time", *FIELDS}
    alerts = (await client.get("/alerts")).json()
    assert {a["name"] for a in alerts["alerts"]} >= {"KeygenLayerDown", "KeygenLatencyHigh"}
    ledger = (await client.get("/ledger")).json()
    assert ledger["ledger"] == "sqlite"
    assert {n["namespace"] for n in ledger["namespaces"]} == {"orders"}
