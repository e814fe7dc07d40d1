"""``kill -9`` of a real ``keygen serve`` under load, then a restart on the same data dir:
nothing acknowledged before is ever handed out again."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from pathlib import Path

import pytest

from keygen.checker import check
from keygen.ledgers.sqlite import LEDGER_FILENAME
from tests.support.load import LoadResult, run_load, wait_for_acks
from tests.support.processes import ServeProcess

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

CLIENTS = 50


async def _crash_and_restart(tmp_path: Path, workers: int) -> None:
    env = {"KEYGEN_DATA_DIR": str(tmp_path / "data"), "KEYGEN_LEASE_SIZE": "20000"}
    server = ServeProcess(env, workers=workers, log=tmp_path / "serve.log").start()
    try:
        stop, before = asyncio.Event(), LoadResult()
        load = asyncio.create_task(
            run_load(
                server.url,
                clients=CLIENTS,
                duration=60,
                namespaces=("default", "orders"),
                stop=stop,
                result=before,
            )
        )
        await wait_for_acks(before, 500, timeout=30)
        server.kill(signal.SIGKILL)  # mid-load: requests are in flight
        stop.set()
        await load

        server.start()
        after = await run_load(
            server.url, clients=CLIENTS, duration=2.0, namespaces=("default", "orders"), seed=1
        )
    finally:
        server.kill(signal.SIGKILL)

    assert after.statuses.keys() == {200} and not after.errors, after
    verdict = check(before.acknowledged + after.acknowledged)
    assert verdict.ok, verdict.summary()
    assert verdict.ranges == len(before.acknowledged) + len(after.acknowledged)
    first_after = min(r.start for r in after.acknowledged if r.namespace == "default")
    assert first_after > max(r.end for r in before.acknowledged if r.namespace == "default")
    with sqlite3.connect(tmp_path / "data" / LEDGER_FILENAME) as ledger:
        holders = [h for (h,) in ledger.execute("SELECT DISTINCT holder FROM grants")]
    # Each process takes leases under its own name: with 2 workers, several processes served
    # (the kernel decides which worker accepts each connection, so not necessarily all four).
    assert len(holders) >= (2 if workers > 1 else 1), holders


async def test_kill_9_then_restart_never_repeats(tmp_path: Path) -> None:
    """50 concurrent clients, SIGKILL mid-load, restart: all acknowledged ranges disjoint."""
    await _crash_and_restart(tmp_path, workers=1)


async def test_two_workers_kill_9_then_restart_never_repeats(tmp_path: Path) -> None:
    """The same with --workers 2: two processes sharing one ledger file stay disjoint."""
    await _crash_and_restart(tmp_path, workers=2)
