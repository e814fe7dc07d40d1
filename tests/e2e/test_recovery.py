"""Recovery paid by no user: a layer that is back serves every request within one probe."""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from keygen.checker import Record, check
from keygen.cluster.postgres import PostgresNode
from keygen.cluster.topology import LocalCluster
from keygen.constants import SOURCE_POSTGRESQL, SOURCE_REDIS, SOURCE_RESERVE
from tests.support.processes import ServeProcess

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

PROBE_INTERVAL = 1.0  # KEYGEN_PROBE_INTERVAL's default
RESET = 0.5  # KEYGEN_BREAKER_RESET_TIMEOUT of the servers under test
SLACK = 1.0  # what a loaded 2-core machine adds (a probe's round trip, scheduling)
BURST = 16  # concurrent requests per burst
EVERY = 0.1  # seconds between bursts


@dataclass
class Burst:
    sent_at: float  # time.monotonic()
    sources: list[str]


async def bursts(url: str, done: list[Burst], records: list[Record], stop: asyncio.Event) -> None:
    """A burst of concurrent requests every ``EVERY`` seconds until ``stop``, each request on
    a connection of its own; every burst into ``done``, every range into ``records``."""
    clients = [httpx.AsyncClient(base_url=url, timeout=10) for _ in range(BURST)]
    try:
        while not stop.is_set():
            sent_at = time.monotonic()
            answers = await asyncio.gather(
                *(c.post("/allocate", json={"size": 10}) for c in clients)
            )
            bodies = [a.json() for a in answers]
            records += [Record.from_json(b) for b in bodies if "start" in b]
            done.append(Burst(sent_at, [b.get("source", "refused") for b in bodies]))
            await asyncio.sleep(max(0.0, sent_at + EVERY - time.monotonic()))
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))


class Load:
    """Bursts in the background, for as long as the block lasts."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.done: list[Burst] = []
        self.records: list[Record] = []
        self._stop = asyncio.Event()

    async def __aenter__(self) -> Load:
        self._task = asyncio.create_task(bursts(self.url, self.done, self.records, self._stop))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await self._task

    async def until(self, source: str, timeout: float) -> None:
        """Wait until a burst was served by ``source`` (with a deadline that says why)."""
        deadline = time.monotonic() + timeout
        while not any(source in b.sources for b in self.done):
            if time.monotonic() > deadline:
                seen = [b.sources for b in self.done[-3:]]
                raise AssertionError(f"no burst served by {source} in {timeout} s: {seen}")
            await asyncio.sleep(0.05)


def back_in(done: list[Burst], since: float, source: str) -> float:
    """Seconds from ``since`` to the first burst ``source`` served any of; that burst and
    every one after it must be wholly ``source``'s: from the moment the layer serves again,
    no request of a burst falls through to a later layer (a request probing the layer while
    the others skip it would make that burst a mix)."""
    after = [b for b in done if b.sent_at >= since]
    first = next((i for i, b in enumerate(after) if source in b.sources), None)
    assert first is not None, f"{source} never served again: {[b.sources for b in after[-3:]]}"
    mixed = [b.sources for b in after[first:] if set(b.sources) != {source}]
    assert not mixed, f"bursts that fell through after {source} was back: {mixed[:3]}"
    return after[first].sent_at - since


async def test_postgresql_back_serves_every_request_within_one_probe(
    controlled_postgres: PostgresNode, postgres_url: str, tmp_path: Path
) -> None:
    """PostgreSQL-only with the reserve: while PostgreSQL is down the reserve serves; once it
    is back, within one probe interval every burst of concurrent requests is served by
    PostgreSQL again, and none falls through to the reserve after that."""
    server = ServeProcess(
        {
            "KEYGEN_DATABASE_URL": postgres_url,
            "KEYGEN_DATA_DIR": str(tmp_path / "data"),
            "KEYGEN_RESERVE": "on",
            "ALLOCATION_TIMEOUT": "2",
            "KEYGEN_DB_CONNECT_TIMEOUT": "0.5",
            "KEYGEN_DB_COMMAND_TIMEOUT": "0.5",
            "KEYGEN_BREAKER_RESET_TIMEOUT": str(RESET),
        },
        log=tmp_path / "serve.log",
    ).start()
    try:
        async with Load(server.url) as load:
            await load.until(SOURCE_POSTGRESQL, timeout=10)
            await asyncio.to_thread(controlled_postgres.stop)
            await load.until(SOURCE_RESERVE, timeout=10)
            await asyncio.to_thread(controlled_postgres.start)
            back_at = time.monotonic()
            await asyncio.sleep(PROBE_INTERVAL + RESET + SLACK + 2.0)
    finally:
        server.stop()
    recovered = back_in(load.done, back_at, SOURCE_POSTGRESQL)
    print(f"PostgreSQL back: every burst served by it {recovered:.2f} s after its restart")
    assert recovered <= PROBE_INTERVAL + RESET + SLACK
    assert check(load.records).ok


async def test_redis_after_a_failover_serves_every_request_within_one_probe(
    cluster: LocalCluster, postgres_url: str, tmp_path: Path
) -> None:
    """After the master is killed and Sentinel promotes a replica, within one probe interval
    of the promotion every burst is served by Redis again, none by PostgreSQL after that, and
    no ID was handed out twice. Segments off: a segment on hand would serve through the
    failover (tests/e2e/test_segments.py), and this is about the layer's own recovery."""
    server = ServeProcess(
        {
            **cluster.env(),
            "KEYGEN_REDIS_SEGMENT_SECONDS": "0",
            "KEYGEN_DATABASE_URL": postgres_url,
            "KEYGEN_DATA_DIR": str(tmp_path / "data"),
            "ALLOCATION_TIMEOUT": "5",
            "KEYGEN_REDIS_TIMEOUT": "0.5",
            "KEYGEN_REDIS_SOCKET_TIMEOUT": "0.25",
            "KEYGEN_BREAKER_RESET_TIMEOUT": str(RESET),
        },
        log=tmp_path / "serve.log",
    ).start()
    try:
        async with Load(server.url) as load:
            await load.until(SOURCE_REDIS, timeout=10)
            old = cluster.master()
            old.kill(signal.SIGKILL)
            await asyncio.to_thread(cluster.wait_for_failover, old, 30)
            promoted_at = time.monotonic()
            await asyncio.sleep(PROBE_INTERVAL + RESET + SLACK + 2.0)
    finally:
        server.stop()
    assert any(SOURCE_POSTGRESQL in b.sources for b in load.done), "no fallback during it"
    recovered = back_in(load.done, promoted_at, SOURCE_REDIS)
    print(f"Redis failover: every burst served by Redis {recovered:.2f} s after the promotion")
    assert recovered <= PROBE_INTERVAL + RESET + SLACK
    assert check(load.records).ok
