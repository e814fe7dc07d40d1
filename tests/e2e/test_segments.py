"""Segments in Redis mode against a real Sentinel topology: requests served from memory with
a Redis call per segment, not per request; a segment on hand rides out a failover; no ID is
ever handed out twice (the checker over every range received)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from keygen.checker import Record, check
from keygen.cluster.topology import LocalCluster
from keygen.constants import SOURCE_REDIS
from tests.support.processes import ServeProcess

pytestmark = pytest.mark.e2e


def fcalls(cluster: LocalCluster) -> int:
    """Function calls the master has run (``INFO commandstats``)."""
    stats = cluster.master().client().info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_fcall"))


def allocate(client: httpx.Client, url: str, records: list[Record], size: int = 10) -> str:
    response = client.post(f"{url}/allocate", json={"size": size})
    assert response.status_code == 200, response.text
    body = response.json()
    records.append(Record.from_json(body))
    return str(body["source"])


def test_redis_mode_makes_a_redis_call_per_segment_not_per_request(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """About 1,000 requests a second for 3 s: fewer than one Redis call per 100 requests,
    every range from redis_sentinel, none sharing an ID."""
    server = ServeProcess(
        {**cluster.env(), "KEYGEN_DATA_DIR": str(tmp_path / "data")}, log=tmp_path / "serve.log"
    ).start()
    records: list[Record] = []
    sources: set[str] = set()
    try:
        with httpx.Client(timeout=5) as client:
            sources.add(allocate(client, server.url, records))  # the first segment
            before = fcalls(cluster)
            started = time.monotonic()
            sent = 0
            while time.monotonic() - started < 3.0:
                sources.add(allocate(client, server.url, records))
                sent += 1
                # paced to about 1,000 a second (a request here takes less than 1 ms)
                time.sleep(max(0.0, started + sent / 1000 - time.monotonic()))
            calls = fcalls(cluster) - before
    finally:
        server.stop()
    print(f"segments: {sent} requests, {calls} Redis function calls")
    assert sources == {SOURCE_REDIS}
    assert sent >= 1000
    assert calls < sent / 100, f"{calls} Redis calls for {sent} requests"
    assert check(records).ok


def test_a_segment_on_hand_rides_out_a_failover(cluster: LocalCluster, tmp_path: Path) -> None:
    """The master killed under load: requests go on being served (from the segment on hand,
    then by the ledger's layer if it runs out), none fails, and once Sentinel has promoted a
    replica ranges come from Redis again."""
    server = ServeProcess(
        {**cluster.env(), "KEYGEN_DATA_DIR": str(tmp_path / "data")}, log=tmp_path / "serve.log"
    ).start()
    records: list[Record] = []
    sources: list[str] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def load() -> None:
        try:
            with httpx.Client(timeout=10) as client:
                while not stop.is_set():
                    sources.append(allocate(client, server.url, records, size=100))
                    time.sleep(0.002)
        except BaseException as exc:  # seen by the test below
            failures.append(exc)

    worker = threading.Thread(target=load)
    try:
        worker.start()
        deadline = time.monotonic() + 10
        while SOURCE_REDIS not in sources:
            assert time.monotonic() < deadline, f"no range from Redis; sources {set(sources)}"
            time.sleep(0.05)
        old = cluster.master()
        old.kill(signal.SIGKILL)
        cluster.wait_for_failover(old, 30)
        served_at_promotion = len(sources)
        # Served by Redis again: the breaker closed by a probe of the new master, a fresh
        # segment carved there once the one on hand ran out.
        deadline = time.monotonic() + 30
        while sources[-1] != SOURCE_REDIS or len(sources) <= served_at_promotion:
            assert time.monotonic() < deadline, f"not back on Redis: {sources[-5:]}"
            time.sleep(0.05)
    finally:
        stop.set()
        worker.join(30)
        server.stop()
    assert not failures, failures
    assert len(sources) > served_at_promotion
    assert sources[-1] == SOURCE_REDIS
    assert check(records).ok
