"""Segments granted by the ledger (the embedded default's layer, and PostgreSQL's in lease
mode): exact sizes, no overlaps, one grant for many waiters, the next one granted ahead."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keygen.checker import Record, check
from keygen.constants import MAX_ID
from keygen.dispensers import lease as lease_module
from keygen.dispensers.lease import LedgerLeases
from keygen.dispensers.segments import SegmentDispenser
from keygen.errors import NamespaceExhausted
from keygen.ledgers.base import Ledger
from keygen.ledgers.sqlite import SqliteLedger
from tests.support.fakes import FakeLedger


def leases(
    ledger: Ledger,
    *,
    lease_size: int,
    holder: str = "h",
    max_lease_size: int | None = None,
    **options: float,
) -> SegmentDispenser:
    """What the service builds for the embedded default (``service.py``)."""
    return SegmentDispenser(
        LedgerLeases(ledger, holder=holder),
        min_length=lease_size,
        max_length=max_lease_size or lease_size * lease_module.LEASE_GROWTH,
        **options,  # type: ignore[arg-type]
    )


requests = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c.d"]), st.integers(1, 40)), min_size=1, max_size=80
)


@settings(max_examples=150, deadline=None)
@given(requests, st.integers(1, 50), st.integers(1, 3), st.randoms(use_true_random=False))
def test_random_interleavings_are_exact_and_disjoint(
    batch: list[tuple[str, int]], lease_size: int, dispensers: int, rng: object
) -> None:
    """Concurrent requests from several dispensers on one ledger, in random order and with
    ledger latency, each get exactly their size and never share an ID."""
    import random

    assert isinstance(rng, random.Random)

    async def run() -> list[Record]:
        ledger = FakeLedger(delay=0.0005)
        pool = [leases(ledger, lease_size=lease_size, holder=f"d{i}") for i in range(dispensers)]

        async def one(namespace: str, size: int) -> Record:
            await asyncio.sleep(rng.random() / 1000)
            got = await rng.choice(pool).allocate(namespace, size)
            return Record.of(got, requested=size)

        got = list(await asyncio.gather(*(one(ns, size) for ns, size in batch)))
        for dispenser in pool:
            await dispenser.aclose()
        return got

    verdict = check(asyncio.run(run()))
    assert verdict.ok, verdict.summary()


@pytest.mark.anyio
async def test_many_waiters_cause_one_refill() -> None:
    """A thousand requests finding no segment on hand cause one ledger grant, not a
    thousand (and its 10,000 IDs, a tenth of it, are not enough to fetch the next ahead)."""
    ledger = FakeLedger(delay=0.01)
    dispenser = leases(ledger, lease_size=100_000)
    got = await asyncio.gather(*(dispenser.allocate("default", 10) for _ in range(1000)))
    assert len(ledger.granted) == 1
    assert check(Record.of(r) for r in got).ok
    await dispenser.aclose()


@pytest.mark.anyio
async def test_the_next_segment_is_granted_while_the_current_one_serves() -> None:
    """With a ledger taking 20 ms a grant, requests keep being served from memory: the next
    segment is granted ahead, so after the first no request waits for the ledger."""
    ledger = FakeLedger(delay=0.02)
    dispenser = leases(ledger, lease_size=100, max_lease_size=100)
    await dispenser.allocate("default", 1)
    waited = []
    for _ in range(300):
        before = len(ledger.granted)
        got = await dispenser.allocate("default", 1)
        waited.append(len(ledger.granted) > before and got.start % 100 == 1)
        await asyncio.sleep(0.001)  # a request a millisecond: a segment lasts ~100 ms
    assert len(ledger.granted) >= 3
    assert not any(waited)
    await dispenser.aclose()


@pytest.mark.anyio
async def test_request_larger_than_the_largest_lease_is_granted_directly() -> None:
    """A request bigger than the bound on leases is one direct grant and leaves the lease
    alone."""
    ledger = FakeLedger()
    dispenser = leases(ledger, lease_size=100, max_lease_size=200)
    small = await dispenser.allocate("default", 10)
    big = await dispenser.allocate("default", 250)
    after = await dispenser.allocate("default", 10)
    assert [kind for _, kind in ledger.granted][:2] == ["lease", "direct"]
    assert big.size == 250
    assert after.start == small.end + 1  # served from the same segment
    assert check(Record.of(r) for r in (small, big, after)).ok
    await dispenser.aclose()


@pytest.mark.anyio
async def test_leases_grow_with_the_requests_so_large_requests_share_grants(
    tmp_path: Path,
) -> None:
    """Requests as large as a lease (or larger) are served from leases that grew toward
    their size, a grant per many requests instead of an fsynced grant row per request, and
    the lease never grows past its bound."""
    ledger = await SqliteLedger.open(tmp_path)
    try:
        dispenser = leases(ledger, lease_size=1000)
        got = [await dispenser.allocate("big", 1000) for _ in range(200)]
        got += [await dispenser.allocate("big", 2500) for _ in range(100)]
        await dispenser.aclose()
        rows = await ledger.grants()
    finally:
        await ledger.aclose()
    assert check(Record.of(r, requested=r.size) for r in got).ok
    assert len(rows) <= 10, [(g.kind, g.end - g.start + 1) for g in rows]
    assert {g.kind for g in rows} == {"lease"}
    assert max(g.end - g.start + 1 for g in rows) <= dispenser.max_length
    assert dispenser.max_length == 1000 * lease_module.LEASE_GROWTH


@pytest.mark.anyio
async def test_idle_namespaces_are_evicted_and_their_tails_never_reused() -> None:
    """Past max_namespaces, the lease of a namespace idle since the last sweep is given up
    (its tail counted as wasted), the busy ones are kept, and an evicted namespace comes
    back on a fresh lease above everything granted before."""
    ledger = FakeLedger()
    dispenser = leases(ledger, lease_size=100, max_namespaces=3, prefetch_at=0.9)
    first = [await dispenser.allocate(ns, 1) for ns in ("hot", "idle-1", "idle-2")]
    for namespace in [f"ns-{i}" for i in range(50)]:
        first.append(await dispenser.allocate("hot", 1))
        first.append(await dispenser.allocate(namespace, 1))
    held = dispenser._namespaces
    assert len(held) <= 3
    assert "hot" in held
    assert 50 <= dispenser.evictions <= 51  # one new namespace each (the first sweep may
    # find every namespace used, and take the first one after clearing their flags)
    assert sum(g.namespace == "hot" for g, _ in ledger.granted) <= 2
    granted = sum(g.size for g, _ in ledger.granted)
    assert (
        dispenser.ids_wasted
        + sum(r.size for r in first)
        + sum(dispenser.remaining(namespace) for namespace in held)
        == granted
    )
    again = await dispenser.allocate("idle-1", 1)
    assert again.start > 100  # the evicted segment 1..100 is never served from again
    assert check(Record.of(r) for r in [*first, again]).ok
    await dispenser.aclose()


@pytest.mark.anyio
async def test_contiguous_refill_keeps_the_tail() -> None:
    """When the next segment starts right after the current one, the tail is not wasted."""
    ledger = FakeLedger()
    dispenser = leases(ledger, lease_size=10, max_lease_size=10)
    first = await dispenser.allocate("default", 7)
    second = await dispenser.allocate("default", 5)  # 3 left: the next is contiguous
    assert (first.start, second.start, second.end) == (1, 8, 12)
    assert dispenser.ids_wasted == 0
    await dispenser.aclose()


@pytest.mark.anyio
async def test_non_contiguous_refill_counts_waste() -> None:
    """When another holder took the next span, the old tail is abandoned and counted."""
    ledger = FakeLedger()
    dispenser = leases(ledger, lease_size=10, max_lease_size=10, prefetch_at=0.9)
    await dispenser.allocate("default", 7)  # 7 of 10 used: not yet the next one ahead
    await ledger.grant("default", 10, kind="lease", holder="someone else")
    second = await dispenser.allocate("default", 5)
    assert second.start == 21
    assert dispenser.ids_wasted == 3
    await dispenser.aclose()


@pytest.mark.anyio
async def test_near_max_id_serves_what_still_fits(tmp_path: Path) -> None:
    """Near 2**63-1 a full segment no longer fits, yet requests that fit are still served."""
    ledger = await SqliteLedger.open(tmp_path)
    try:
        await ledger.advance_to("edge", MAX_ID - 15)
        dispenser = leases(ledger, lease_size=1000)
        got = await dispenser.allocate("edge", 10)
        assert (got.start, got.end) == (MAX_ID - 14, MAX_ID - 5)
        with pytest.raises(NamespaceExhausted) as refused:
            await dispenser.allocate("edge", 6)
        assert refused.value.remaining == 5  # the tail this process holds
        assert (await dispenser.allocate("edge", 5)).end == MAX_ID
        await dispenser.aclose()
    finally:
        await ledger.aclose()
