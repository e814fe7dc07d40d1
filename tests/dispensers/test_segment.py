"""The segment value and the one "what is left near the end of a namespace" rule that every
dispenser uses (``keygen/dispensers/segment.py``)."""

from __future__ import annotations

import pytest

from keygen.dispensers.segment import Segment, what_is_left
from keygen.errors import NamespaceExhausted


def test_carves_are_consecutive_and_stop_at_the_end() -> None:
    segment = Segment(10, 19)
    assert [segment.carve(4), segment.carve(4)] == [10, 14]
    assert segment.carve(3) is None  # 2 left
    assert (segment.remaining, segment.used) == (2, 8)
    assert segment.carve(2) == 18
    assert segment.remaining == 0 and segment.carve(1) is None


def test_a_carve_stays_below_a_bound() -> None:
    """The reserve serves only what its journal covers."""
    segment = Segment(1, 100)
    assert segment.carve(5, below=8) == 1
    assert segment.carve(5, below=8) is None
    assert segment.carve(3, below=8) == 6


def test_follows() -> None:
    assert Segment(11, 20).follows(Segment(1, 10))
    assert not Segment(12, 20).follows(Segment(1, 10))
    assert Segment.empty().remaining == 0


class Namespace:
    """A namespace with ``left`` IDs, granting as a ledger does."""

    def __init__(self, left: int) -> None:
        self.left = left
        self.asked: list[int] = []

    async def take(self, count: int) -> int:
        self.asked.append(count)
        if count > self.left:
            raise NamespaceExhausted("n", count, self.left)
        self.left -= count
        return count


@pytest.mark.anyio
async def test_what_is_left_is_taken_when_the_request_fits_in_it() -> None:
    namespace = Namespace(left=30)
    assert await what_is_left(namespace.take, "n", 1000, size=10) == 30
    assert namespace.asked == [1000, 30]


@pytest.mark.anyio
async def test_too_little_left_is_refused_with_what_the_caller_holds_counted() -> None:
    namespace = Namespace(left=5)
    with pytest.raises(NamespaceExhausted) as refused:
        await what_is_left(namespace.take, "n", 1000, size=10, elsewhere=3)
    assert (refused.value.requested, refused.value.remaining) == (10, 8)
    assert namespace.asked == [1000]
