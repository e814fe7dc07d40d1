"""``IdPool`` and ``AsyncIdPool`` against a real ``keygen serve``: unique IDs across threads
and processes (the checker over every ID received), ranges taken, blocks on hand serving
while the service is down, and the pool serving again once it is back."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from keygen.checker import Record, check
from keygen.client import KeygenClient
from keygen.pool import AsyncIdPool, IdPool, PoolExhausted
from tests.support.processes import ServeProcess

pytestmark = pytest.mark.e2e

NAMESPACE = "pooled"


def as_records(ids: Iterable[int]) -> list[Record]:
    """The IDs as the runs of consecutive IDs they make, for the checker (a duplicate ID
    makes two runs share it)."""
    records: list[Record] = []
    start = previous = None
    for value in sorted(ids):
        if previous is not None and value == previous + 1:
            previous = value
            continue
        if start is not None and previous is not None:
            records.append(Record(NAMESPACE, start, previous, previous - start + 1))
        start = previous = value
    if start is not None and previous is not None:
        records.append(Record(NAMESPACE, start, previous, previous - start + 1))
    return records


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServeProcess]:
    instance = ServeProcess(
        {"KEYGEN_DATA_DIR": str(tmp_path / "data")}, log=tmp_path / "serve.log"
    ).start()
    try:
        yield instance
    finally:
        instance.stop()


def test_ids_are_unique_across_threads_and_ranges(server: ServeProcess) -> None:
    """8 threads drawing next_id() and take() from one pool: every ID once."""
    drawn: list[list[int]] = [[] for _ in range(8)]
    with IdPool(server.url, namespace=NAMESPACE, block=1000) as pool:

        def draw(mine: list[int], index: int) -> None:
            for i in range(5000):
                if index % 2 and i % 500 == 0:
                    mine.extend(pool.take(37))
                else:
                    mine.append(pool.next_id())

        threads = [threading.Thread(target=draw, args=(d, i)) for i, d in enumerate(drawn)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        big = pool.take(5000)  # more than a block: a range of its own
    ids = [value for mine in drawn for value in mine] + list(big)
    assert len(ids) == 8 * 5000 + 4 * 10 * 36 + 5000
    verdict = check(as_records(ids))
    assert verdict.ok, verdict
    assert len(set(ids)) == len(ids)


def test_ids_are_unique_across_processes(server: ServeProcess, tmp_path: Path) -> None:
    """Three processes, a pool each, drawing at once: every ID once across them."""
    program = (
        "import json, sys\n"
        "from keygen.pool import IdPool\n"
        "with IdPool(sys.argv[1], namespace=sys.argv[2], block=500) as pool:\n"
        "    print(json.dumps([pool.next_id() for _ in range(20000)]))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", program, server.url, NAMESPACE],
            stdout=subprocess.PIPE,
            env=os.environ.copy(),
        )
        for _ in range(3)
    ]
    ids: list[int] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        ids.extend(json.loads(out))
    assert len(ids) == 60_000
    verdict = check(as_records(ids))
    assert verdict.ok, verdict


def test_blocks_on_hand_serve_while_the_service_is_down(
    server: ServeProcess, tmp_path: Path
) -> None:
    """With the service stopped, the pool serves the block it holds and the one it fetched
    ahead; then it says it is exhausted (within its timeout); once the service is back on
    the same address, it serves again, never an ID twice."""
    client = KeygenClient(server.url, timeout=2.0)  # a fetch gives up soon while it is down
    pool = IdPool(namespace=NAMESPACE, block=1000, timeout=1.0, client=client)
    again: ServeProcess | None = None
    try:
        ids = [pool.next_id() for _ in range(200)]  # a tenth used: the next block fetched
        for _ in range(200):  # the prefetch in flight: wait for it, bounded
            if pool._spare is not None:
                break
            threading.Event().wait(0.05)
        assert pool._spare is not None, "the next block was never fetched"
        server.stop()
        ids += [pool.next_id() for _ in range(1800)]  # the rest of both blocks
        with pytest.raises(PoolExhausted):
            for _ in range(1000):
                ids.append(pool.next_id())
        assert len(ids) == 2000
        again = ServeProcess(server.env, log=tmp_path / "again.log", port=server.port).start()
        pool.timeout = 15.0  # the fetcher may be between two attempts
        ids += [pool.next_id() for _ in range(3000)]
    finally:
        pool.close()
        client.close()
        if again is not None:
            again.stop()
    verdict = check(as_records(ids))
    assert verdict.ok, verdict
    assert len(set(ids)) == 5000


def test_the_async_pool_hands_out_unique_ids(server: ServeProcess) -> None:
    """Coroutines on one loop drawing from one AsyncIdPool: every ID once."""

    async def scenario() -> list[int]:
        async with AsyncIdPool(server.url, namespace=NAMESPACE, block=700) as pool:

            async def draw() -> list[int]:
                mine: list[int] = []
                for i in range(3000):
                    if i % 1000 == 999:
                        mine.extend(await pool.take(50))
                    mine.append(await pool.next_id())
                return mine

            drawn = await asyncio.gather(*(draw() for _ in range(4)))
        return [value for mine in drawn for value in mine]

    ids = asyncio.run(scenario())
    assert len(ids) == 4 * (3000 + 3 * 50)
    verdict = check(as_records(ids))
    assert verdict.ok, verdict
