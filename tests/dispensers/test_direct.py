"""The direct dispenser: concurrent requests coalesced into one ledger grant, split exactly."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keygen.checker import Record, check
from keygen.constants import MAX_ID
from keygen.dispensers.direct import DirectDispenser
from keygen.errors import (
    LayerUnavailable,
    LedgerUnavailable,
    NamespaceExhausted,
    TooManyNamespaces,
)
from keygen.ledgers.postgres import PostgresLedger
from keygen.ledgers.sqlite import SqliteLedger
from keygen.ranges import IdRange
from keygen.requester import REQUESTED_BY
from tests.support.fakes import FakeLedger


class GatedLedger(FakeLedger):
    """A fake ledger whose grants each wait for a permit the test releases."""

    def __init__(self) -> None:
        super().__init__()
        self.permits = asyncio.Semaphore(0)
        self.asked: list[int] = []
        self.in_flight = 0

    async def grant(self, namespace: str, count: int, *, kind: str, holder: str) -> IdRange:
        self.asked.append(count)
        self.in_flight += 1
        try:
            await self.permits.acquire()
        finally:
            self.in_flight -= 1
        return await super().grant(namespace, count, kind=kind, holder=holder)

    def release(self, grants: int = 1) -> None:
        for _ in range(grants):
            self.permits.release()


async def settle() -> None:
    """Let every ready task run until the loop is idle again."""
    for _ in range(20):
        await asyncio.sleep(0)


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def test_a_lone_request_is_granted_at_once_alone() -> None:
    """With nothing in flight a request is its own grant, of exactly its size."""

    async def scenario() -> None:
        ledger = FakeLedger()
        dispenser = DirectDispenser(ledger, holder="test")
        assert await dispenser.allocate("default", 7) == IdRange("default", 1, 7)
        assert await dispenser.allocate("default", 3) == IdRange("default", 8, 10)
        assert [(g.size, kind) for g, kind in ledger.granted] == [(7, "direct"), (3, "direct")]

    run(scenario)


def test_requests_arriving_during_a_grant_share_the_next_one() -> None:
    """Requests that queue while a grant is in flight are served by one grant of their total,
    split in arrival order into ranges of exactly the sizes asked."""

    async def scenario() -> None:
        ledger = GatedLedger()
        dispenser = DirectDispenser(ledger, holder="test")
        first = asyncio.create_task(dispenser.allocate("default", 5))
        await settle()
        assert ledger.in_flight == 1
        rest = [asyncio.create_task(dispenser.allocate("default", n)) for n in (1, 10, 100)]
        await settle()
        assert ledger.asked == [5]  # still one grant: the others wait for it
        ledger.release(2)
        results = [await first, *await asyncio.gather(*rest)]
        assert ledger.asked == [5, 111]
        assert [(r.start, r.end) for r in results] == [(1, 5), (6, 6), (7, 16), (17, 116)]
        assert dispenser.grants == 2 and dispenser.requests_served == 4

    run(scenario)


def test_a_request_that_gives_up_in_flight_wastes_its_share() -> None:
    """A request cancelled while its batch's grant is in flight gets nothing, and its slice
    is handed to no other request: it is counted as wasted."""

    async def scenario() -> None:
        ledger = GatedLedger()
        dispenser = DirectDispenser(ledger, holder="test")
        tasks = [asyncio.create_task(dispenser.allocate("default", n)) for n in (10, 20, 30)]
        await settle()
        assert ledger.asked == [60]
        tasks[1].cancel()
        await settle()
        later = asyncio.create_task(dispenser.allocate("default", 20))
        await settle()
        ledger.release(2)
        first, third, fourth = await tasks[0], await tasks[2], await later
        with pytest.raises(asyncio.CancelledError):
            await tasks[1]
        assert (first.start, first.end) == (1, 10)
        assert (third.start, third.end) == (31, 60)  # 11..30 was the cancelled share
        assert (fourth.start, fourth.end) == (61, 80)  # never 11..30
        assert dispenser.ids_wasted == 20

    run(scenario)


def test_a_request_that_gives_up_before_its_grant_is_left_out() -> None:
    """A request cancelled while still queued is not part of the grant at all."""

    async def scenario() -> None:
        ledger = GatedLedger()
        dispenser = DirectDispenser(ledger, holder="test")
        blocker = asyncio.create_task(dispenser.allocate("default", 1))
        await settle()
        queued = [asyncio.create_task(dispenser.allocate("default", n)) for n in (2, 3)]
        await settle()
        queued[0].cancel()
        await settle()
        ledger.release(2)
        await blocker
        served = await queued[1]
        assert ledger.asked == [1, 3]
        assert (served.start, served.end) == (2, 4)
        assert dispenser.ids_wasted == 0

    run(scenario)


def test_a_failed_grant_fails_its_whole_batch_and_nothing_else() -> None:
    """When the ledger fails, every request of the batch gets its own LedgerUnavailable, and
    the next request is granted normally."""

    async def scenario() -> None:
        ledger = FakeLedger(delay=0.01)
        dispenser = DirectDispenser(ledger, holder="test")
        ledger.down = True
        results = await asyncio.gather(
            *(dispenser.allocate("default", 5) for _ in range(4)), return_exceptions=True
        )
        assert all(isinstance(r, LedgerUnavailable) for r in results)
        assert len({id(r) for r in results}) == 4  # one exception object per request
        ledger.down = False
        assert await dispenser.allocate("default", 5) == IdRange("default", 1, 5)

    run(scenario)


def test_near_exhaustion_the_requests_that_fit_are_served() -> None:
    """If a batch's total does not fit below 2**63-1, the requests that still fit (in arrival
    order) are served and only the others get NamespaceExhausted."""

    async def scenario() -> None:
        ledger = GatedLedger()
        await ledger.advance_to("default", MAX_ID - 10)
        dispenser = DirectDispenser(ledger, holder="test")
        tasks = [asyncio.create_task(dispenser.allocate("default", n)) for n in (6, 8, 4)]
        await settle()
        ledger.release(3)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert ledger.asked == [18, 10]
        assert results[0] == IdRange("default", MAX_ID - 9, MAX_ID - 4)
        assert isinstance(results[1], NamespaceExhausted) and results[1].remaining == 10 - 6
        assert results[2] == IdRange("default", MAX_ID - 3, MAX_ID)

    run(scenario)


def test_namespaces_are_granted_independently() -> None:
    """A grant in flight for one namespace does not hold up another namespace."""

    async def scenario() -> None:
        ledger = GatedLedger()
        dispenser = DirectDispenser(ledger, holder="test")
        a = asyncio.create_task(dispenser.allocate("a", 1))
        b = asyncio.create_task(dispenser.allocate("b", 2))
        await settle()
        assert ledger.in_flight == 2
        ledger.release(2)
        assert (await a, await b) == (IdRange("a", 1, 1), IdRange("b", 1, 2))

    run(scenario)


def test_closing_fails_every_waiting_request() -> None:
    """aclose ends in-flight and queued requests with LayerUnavailable instead of leaving
    them waiting, and later requests are refused."""

    async def scenario() -> None:
        ledger = GatedLedger()
        dispenser = DirectDispenser(ledger, holder="test")
        first = asyncio.create_task(dispenser.allocate("default", 1))
        await settle()
        second = asyncio.create_task(dispenser.allocate("default", 1))
        await settle()
        await dispenser.aclose()
        for task in (first, second):
            with pytest.raises(LayerUnavailable):
                await task
        with pytest.raises(LayerUnavailable):
            await dispenser.allocate("default", 1)

    run(scenario)


# A wave: request sizes that arrive together; then the step at which some of them give up.
waves_strategy = st.lists(
    st.lists(
        st.tuples(st.integers(1, 10**6), st.none() | st.integers(0, 4)), min_size=1, max_size=12
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(waves=waves_strategy)
def test_coalesced_ranges_are_exact_disjoint_and_account_for_every_grant(
    waves: list[list[tuple[int, int | None]]],
) -> None:
    """Whatever the arrivals and give-ups, every served range has exactly its size, no two
    overlap, each lies in a grant, every granted ID is served once or counted as wasted, and
    there are no more grants than waves."""

    async def scenario() -> None:
        ledger = GatedLedger()
        dispenser = DirectDispenser(ledger, holder="test")
        tasks: list[tuple[int, int | None, asyncio.Task[IdRange]]] = []
        for step, wave in enumerate(waves):
            for size, give_up in wave:
                task = asyncio.create_task(dispenser.allocate("default", size))
                tasks.append((size, None if give_up is None else step + give_up, task))
            await settle()
            for _, give_up_at, task in tasks:
                if give_up_at == step:
                    task.cancel()
            await settle()
            ledger.release()
            await settle()
        ledger.release(len(waves) + 1)
        outcomes = await asyncio.gather(*(t for _, _, t in tasks), return_exceptions=True)

        served = [
            (size, r)
            for (size, _, _), r in zip(tasks, outcomes, strict=True)
            if isinstance(r, IdRange)
        ]
        assert all(isinstance(r, IdRange | asyncio.CancelledError) for r in outcomes)
        verdict = check(Record.of(r, requested=size) for size, r in served)
        assert verdict.ok, verdict.summary()
        grants = [g for g, _ in ledger.granted]
        for _, r in served:
            assert any(g.start <= r.start and r.end <= g.end for g in grants), r
        assert sum(r.size for _, r in served) + dispenser.ids_wasted == sum(g.size for g in grants)
        assert len(grants) <= len(waves)
        uncancelled = [t for _, give_up_at, t in tasks if give_up_at is None]
        assert all(not t.cancelled() for t in uncancelled)

    run(scenario)


@pytest.mark.anyio
async def test_coalescing_against_postgresql_needs_far_fewer_grants(postgres_url: str) -> None:
    """Against the real ledger, 400 concurrent requests are served disjointly by far fewer
    grants, each recorded as a direct grant that covers the ranges it served."""
    ledger = await PostgresLedger.open(postgres_url)
    dispenser = DirectDispenser(ledger, holder="test")
    try:
        sizes = [1 + (i * 37) % 500 for i in range(400)]
        ranges = await asyncio.gather(*(dispenser.allocate("default", n) for n in sizes))
    finally:
        await dispenser.aclose()
        await ledger.aclose()
    verdict = check(Record.of(r, requested=n) for r, n in zip(ranges, sizes, strict=True))
    assert verdict.ok, verdict.summary()
    conn = await asyncpg.connect(postgres_url)
    try:
        rows = await conn.fetch("SELECT start_id, end_id, kind FROM keygen_grants")
    finally:
        await conn.close()
    assert 1 <= len(rows) <= 100 and {row["kind"] for row in rows} == {"direct"}
    for r in ranges:
        assert any(row["start_id"] <= r.start and r.end <= row["end_id"] for row in rows)
    assert sum(row["end_id"] - row["start_id"] + 1 for row in rows) == sum(sizes)


def test_a_namespace_past_the_ledgers_bound_is_refused_as_the_request_error(
    tmp_path: Path,
) -> None:
    """The ledger's TooManyNamespaces reaches the caller as itself (a 409), not as a
    LedgerUnavailable the allocator would fall back from; existing namespaces are served."""

    async def scenario() -> None:
        ledger = await SqliteLedger.open(tmp_path, max_namespaces=1)
        try:
            dispenser = DirectDispenser(ledger, holder="test")
            assert (await dispenser.allocate("a", 5)).end == 5
            with pytest.raises(TooManyNamespaces):
                await dispenser.allocate("b", 5)
            assert (await dispenser.allocate("a", 5)).start == 6
            await dispenser.aclose()
        finally:
            await ledger.aclose()

    asyncio.run(scenario())


class NamingLedger(GatedLedger):
    """A gated ledger that notes whom each grant says it is for."""

    def __init__(self) -> None:
        super().__init__()
        self.requested_by: list[str] = []

    async def grant(self, namespace: str, count: int, *, kind: str, holder: str) -> IdRange:
        self.requested_by.append(REQUESTED_BY.get())
        return await super().grant(namespace, count, kind=kind, holder=holder)


def test_a_coalesced_batch_names_every_key_it_was_granted_for() -> None:
    """The grant of a batch names each key of its requests once, in arrival order; a request
    without a key adds nothing."""

    async def scenario() -> None:
        ledger = NamingLedger()
        dispenser = DirectDispenser(ledger, holder="test")

        async def allocate(key: str) -> IdRange:
            REQUESTED_BY.set(key)  # each task its own context, as each HTTP request
            return await dispenser.allocate("default", 1)

        first = asyncio.ensure_future(allocate("k1 (one)"))
        await settle()  # in flight: the rest queue up as the next batch
        rest = [
            asyncio.ensure_future(allocate(k)) for k in ("k2 (two)", "", "k3 (three)", "k2 (two)")
        ]
        await settle()
        ledger.release(2)
        await asyncio.gather(first, *rest)
        assert ledger.requested_by == ["k1 (one)", "k2 (two), k3 (three)"]

    run(scenario)
