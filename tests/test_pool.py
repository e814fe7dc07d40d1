"""The pools' logic against a client that hands out ranges from a counter (the service itself
is in tests/e2e/test_pool.py): threads that run out of IDs together, and takes larger than
what the spare block has left."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, cast

from keygen.client import KeygenClient
from keygen.pool import IdPool


@dataclass(frozen=True)
class Granted:
    start: int
    end: int


class GatedClient:
    """Ranges from a counter; each ``allocate`` waits until the test opens ``gate``."""

    def __init__(self) -> None:
        self.next_start = 1
        self.calls = 0
        self.gate = threading.Semaphore(0)
        self._lock = threading.Lock()

    def allocate(self, *, size: int, namespace: str) -> Granted:
        if not self.gate.acquire(timeout=30):
            raise TimeoutError("the test never let this allocate through")
        with self._lock:
            self.calls += 1
            start, self.next_start = self.next_start, self.next_start + size
        return Granted(start, start + size - 1)

    def close(self) -> None:
        pass


def pool_on(client: GatedClient, **options: Any) -> IdPool:
    return IdPool(client=cast(KeygenClient, client), namespace="n", **options)


def test_threads_that_run_out_together_share_the_block_one_of_them_swapped_in() -> None:
    """Two threads find no ID at once; the one block fetched serves both (the second must
    not wait for a spare block that nobody will ask for)."""
    client = GatedClient()
    pool = pool_on(client, block=100, timeout=5)
    got: list[int] = []
    errors: list[BaseException] = []

    def draw() -> None:
        try:
            got.append(pool.next_id())
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=draw) for _ in range(2)]
    for thread in threads:
        thread.start()
    client.gate.release()  # one block, for the first call
    for thread in threads:
        thread.join(10)
    pool.close()
    assert not errors, errors
    assert sorted(got) == [1, 2]
    assert client.calls == 1


def test_a_take_larger_than_the_spare_left_gets_a_range_of_its_own() -> None:
    """A spare block with 3 IDs left and a take of 5: never a range past the block's end."""
    client = GatedClient()
    for _ in range(3):
        client.gate.release()
    pool = pool_on(client, block=10, timeout=5)
    first = pool.take(7)  # the first block, 1-10: 8-10 stay spare
    second = pool.take(5)  # more than the 3 left: its own range
    third = pool.take(3)  # the 3 left
    pool.close()
    assert (first.start, first.end) == (1, 7)
    assert (second.start, second.end) == (11, 15)
    assert (third.start, third.end) == (8, 10)


def test_many_threads_drawing_get_every_id_once() -> None:
    threads = 8
    client = GatedClient()
    for _ in range(10_000):
        client.gate.release()
    pool = pool_on(client, block=50, timeout=5)
    drawn: list[list[int]] = [[] for _ in range(threads)]

    def draw(mine: list[int], index: int) -> None:
        for i in range(2000):
            mine.extend(pool.take(7) if index % 2 and i % 100 == 0 else [pool.next_id()])

    workers = [threading.Thread(target=draw, args=(d, i)) for i, d in enumerate(drawn)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    pool.close()
    ids = [value for mine in drawn for value in mine]
    assert len(ids) == threads * 2000 + threads // 2 * 20 * 6
    assert len(set(ids)) == len(ids)
