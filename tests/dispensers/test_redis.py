"""The Redis dispenser against a real redis-server: what a fault leaves behind (a refill lock,
dead pooled connections) must not keep requests off Redis once the fault is over.

The refill lock must not block the namespace until ``LOCK_TIMEOUT``.

Two ways it could: the holder's release is lost (Redis unreachable at that moment), or the
lock outlives the server incarnation it was taken on (copied to a promoted replica, or
reloaded from the AOF by a restarted master). Each test gives the lock a life far longer than
its own bounds, so it passes only if the lock stops blocking long before it expires.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from keygen.checker import Record, check
from keygen.cluster.processes import free_port
from keygen.cluster.redis import RedisNode
from keygen.constants import MAX_ID, REDIS_LOCK_KEY
from keygen.dispensers import redis_functions as fn
from keygen.dispensers.redis import RedisDispenser
from keygen.errors import LayerUnavailable, NamespaceExhausted
from keygen.ledgers.sqlite import SqliteLedger
from keygen.ranges import IdRange

pytestmark = [pytest.mark.anyio]

#: Far longer than any wait below: a test that had to wait for expiry fails.
LOCK_LIFE = 120.0
NAMESPACE = "orders"


class PausableLedger(SqliteLedger):
    """A SQLite ledger whose next grant waits until the test lets it go."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.hold: asyncio.Event | None = None
        self.granting = asyncio.Event()

    async def grant(self, namespace: str, count: int, *, kind: str, holder: str) -> IdRange:
        self.granting.set()
        if self.hold is not None:
            await self.hold.wait()
        return await super().grant(namespace, count, kind=kind, holder=holder)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RedisNode]:
    server = RedisNode(tmp_path / "redis", free_port())
    server.start()
    try:
        yield server
    finally:
        if server.is_paused():
            server.resume()
        server.stop()


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[PausableLedger]:
    ledger = PausableLedger(tmp_path / "ledger.sqlite3")
    await ledger._run(ledger._connect)
    try:
        yield ledger
    finally:
        await ledger.aclose()


def dispenser(node: RedisNode, ledger: SqliteLedger, holder: str) -> RedisDispenser:
    redis = Redis(
        host=node.host,
        port=node.port,
        decode_responses=True,
        retry=Retry(NoBackoff(), 0),
        socket_timeout=0.3,
        socket_connect_timeout=0.3,
    )
    return RedisDispenser(
        redis,
        ledger,
        holder=holder,
        lease_size=1000,
        min_lease_size=1000,
        max_lease_size=10**6,
        lock_timeout=LOCK_LIFE,
    )


async def test_the_lock_is_exclusive_on_one_incarnation(
    node: RedisNode, ledger: PausableLedger
) -> None:
    one, other = dispenser(node, ledger, "one"), dispenser(node, ledger, "other")
    key = REDIS_LOCK_KEY.format(NAMESPACE)
    try:
        assert await one._call(fn.LOCK, key, "token-1", "60000") == 1
        assert await other._call(fn.LOCK, key, "token-2", "60000") == 0
        assert await other._call(fn.UNLOCK, key, "token-2") == 0  # not its lock
        assert await one._call(fn.UNLOCK, key, "token-1") == 1
        assert await other._call(fn.LOCK, key, "token-2", "60000") == 1
    finally:
        await one.aclose()
        await other.aclose()


async def test_a_lock_of_an_earlier_incarnation_is_void(
    node: RedisNode, ledger: PausableLedger
) -> None:
    """A master restarted from its AOF reloads a lock its holder never released (it died):
    the restarted server is another incarnation, so a refill takes the lock over at once."""
    first = dispenser(node, ledger, "first")
    records = [Record.of(await first.allocate(NAMESPACE, 600))]
    life_ms = str(int(LOCK_LIFE * 1000))
    await first._call(fn.LOCK, REDIS_LOCK_KEY.format(NAMESPACE), "died-holding-it", life_ms)
    await first.aclose()

    node.stop()
    node.start()  # from the AOF: the lock is back, and the lease is fenced
    second = dispenser(node, ledger, "second")
    try:
        assert await second.redis.exists(REDIS_LOCK_KEY.format(NAMESPACE)) == 1
        async with asyncio.timeout(10):
            records.append(Record.of(await second.allocate(NAMESPACE, 600)))
        assert second.refills == 1
    finally:
        await second.aclose()
    assert check(records).ok


async def test_a_release_lost_to_a_fault_is_retried(
    node: RedisNode, ledger: PausableLedger
) -> None:
    """Redis stops answering while a refill holds the lock, so its release fails; once Redis
    answers again the lock is released (not left for ``LOCK_TIMEOUT``) and another instance
    takes it to refill."""
    stalled, other = dispenser(node, ledger, "stalled"), dispenser(node, ledger, "other")
    key = REDIS_LOCK_KEY.format(NAMESPACE)
    records: list[Record] = []
    try:
        ledger.hold = asyncio.Event()
        refill = asyncio.create_task(stalled.allocate(NAMESPACE, 10))
        await asyncio.wait_for(ledger.granting.wait(), 10)
        assert await other.redis.exists(key) == 1  # the lock is held during the grant
        node.pause()
        ledger.hold.set()  # INSTALL and then the release now time out
        with pytest.raises(LayerUnavailable):
            await asyncio.wait_for(refill, 10)
        node.resume()  # Redis now runs the INSTALL it had buffered: a 1,000-ID lease

        async with asyncio.timeout(10):
            while await other.redis.exists(key):
                await asyncio.sleep(0.05)
            # More than that lease holds: served only if ``other`` can take the lock.
            records.append(Record.of(await other.allocate(NAMESPACE, 5000)))
        assert other.refills == 1
    finally:
        await stalled.aclose()
        await other.aclose()
    assert check(records).ok


async def test_connections_reset_under_the_pool_fail_one_request_not_each(
    node: RedisNode, ledger: PausableLedger
) -> None:
    """When the server drops every connection (a restart, a reset partition), the first
    request to notice falls back (LayerUnavailable) and the pool's other idle connections are
    closed with it, so the requests after it connect afresh instead of each finding a dead
    connection of its own."""
    dispenser_ = dispenser(node, ledger, "pooled")
    # One call in flight per namespace at a time: several namespaces at once use several
    # connections.
    namespaces = [f"ns{i}" for i in range(8)]
    records: list[Record] = []
    try:
        ranges = await asyncio.gather(*(dispenser_.allocate(ns, 1) for ns in namespaces))
        records += [Record.of(r) for r in ranges]
        pooled = len(dispenser_.redis.connection_pool._available_connections)
        assert pooled >= 2  # concurrent calls left several connections in the pool
        with node.client() as admin:
            assert admin.client_kill_filter(_type="normal", skipme=True) >= pooled

        with pytest.raises(LayerUnavailable):
            await dispenser_.allocate(NAMESPACE, 1)
        outcomes = await asyncio.gather(
            *(dispenser_.allocate(ns, 1) for ns in namespaces), return_exceptions=True
        )
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        assert failed == []
        records += [Record.of(r) for r in outcomes if isinstance(r, IdRange)]
    finally:
        await dispenser_.aclose()
    assert check(records).ok


async def test_concurrent_requests_share_one_call_and_get_disjoint_ranges(
    node: RedisNode, ledger: PausableLedger
) -> None:
    """Requests arriving while a call is in flight are served by one call of their total
    size, each with exactly its size, none overlapping; the lease's cursor moves by the sum."""
    dispenser_ = dispenser(node, ledger, "batching")
    calls = 0
    fcall = dispenser_.redis.fcall

    async def counting_fcall(function: str, *args: object) -> object:
        nonlocal calls
        calls += function == fn.ALLOCATE
        return await fcall(function, *args)  # type: ignore[arg-type]

    dispenser_.redis.fcall = counting_fcall  # type: ignore[method-assign, assignment]
    sizes = [1 + i % 7 for i in range(200)]
    try:
        await dispenser_.allocate(NAMESPACE, 1)  # installs the lease
        calls = 0
        ranges = await asyncio.gather(*(dispenser_.allocate(NAMESPACE, n) for n in sizes))
        state = await dispenser_.peek(NAMESPACE)
    finally:
        await dispenser_.aclose()
    assert [r.size for r in ranges] == sizes
    verdict = check(Record.of(r) for r in ranges)
    assert verdict.ok, verdict.summary()
    assert calls < len(sizes) / 10  # batched: 200 requests, a handful of calls
    assert state.length - state.left == 1 + sum(sizes)


async def test_the_end_of_a_namespace_serves_what_fits_and_refuses_the_rest(
    node: RedisNode, ledger: PausableLedger
) -> None:
    """Near 2**63-1 a lease cannot have its usual length: requests that fit in what is left
    are served from a lease of the namespace's last IDs, the others get NamespaceExhausted
    with what is left; a batch is split the same way, in arrival order."""
    dispenser_ = dispenser(node, ledger, "edge")
    await ledger.advance_to(NAMESPACE, MAX_ID - 3000)
    try:
        first = await dispenser_.allocate(NAMESPACE, 2500)  # a lease of 2,500: 500 left
        served, refused = await asyncio.gather(
            dispenser_.allocate(NAMESPACE, 400),
            dispenser_.allocate(NAMESPACE, 300),
            return_exceptions=True,
        )
        with pytest.raises(NamespaceExhausted) as too_big:
            await dispenser_.allocate(NAMESPACE, 101)
        last = await dispenser_.allocate(NAMESPACE, 100)
    finally:
        await dispenser_.aclose()
    assert (first.start, first.end) == (MAX_ID - 2999, MAX_ID - 500)
    assert isinstance(served, IdRange) and served.size == 400
    assert isinstance(refused, NamespaceExhausted) and refused.remaining == 100
    assert too_big.value.remaining == 100
    assert last.end == MAX_ID
    assert check(Record.of(r) for r in (first, served, last)).ok


async def test_what_is_left_split_between_lease_and_ledger_is_served_one_at_a_time(
    node: RedisNode, ledger: PausableLedger
) -> None:
    """100 IDs left in the lease, 150 in the ledger: a batch of 120 and 110 fits in neither
    but in their sum; it is served one request at a time instead of looping."""
    dispenser_ = dispenser(node, ledger, "split")
    await ledger.advance_to(NAMESPACE, MAX_ID - 1150)
    try:
        first = await dispenser_.allocate(NAMESPACE, 900)  # a lease of 1,000: 100 left
        outcomes = await asyncio.wait_for(
            asyncio.gather(
                dispenser_.allocate(NAMESPACE, 120),
                dispenser_.allocate(NAMESPACE, 110),
                return_exceptions=True,
            ),
            10,
        )
    finally:
        await dispenser_.aclose()
    served, refused = outcomes
    assert isinstance(served, IdRange) and served.size == 120 and served.end == MAX_ID - 30
    assert isinstance(refused, NamespaceExhausted) and refused.remaining == 30
    assert check(Record.of(r) for r in (first, served)).ok
