"""The segment: a span of IDs one layer handed this process alone, served by moving a cursor.

Every dispenser that serves from memory holds its spans as segments: the in-process segments
carved from the Redis lease or granted by the ledger (``segments.py``), and the emergency
reserves (``reserve_state.py``). And every one of them, asking for a span near the end of
a namespace, asks for what is left instead (``what_is_left``), so that the last IDs of a
namespace are served rather than refused because a whole segment no longer fits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from keygen.errors import NamespaceExhausted

__all__ = ["Segment", "what_is_left"]

Granted = TypeVar("Granted")


class Segment:
    """IDs ``start..end`` (both included); ``next..end`` are left to hand out.

    ``carve`` reads and moves the cursor with no ``await`` in between, so requests on one
    event loop cannot interleave inside it: each carved range is handed out once.
    """

    __slots__ = ("end", "next", "start")

    def __init__(self, start: int, end: int, next_id: int | None = None) -> None:
        self.start = start
        self.end = end
        self.next = start if next_id is None else next_id

    @classmethod
    def empty(cls) -> Segment:
        return cls(1, 0)

    @property
    def size(self) -> int:
        return self.end - self.start + 1

    @property
    def remaining(self) -> int:
        return max(0, self.end - self.next + 1)

    @property
    def used(self) -> int:
        return self.next - self.start

    def carve(self, size: int, below: int | None = None) -> int | None:
        """The first of ``size`` IDs now handed out, or None when fewer are left (up to
        ``below``, when given: the reserve serves only what its journal covers)."""
        start = self.next
        if start + size - 1 > (self.end if below is None else below):
            return None
        self.next = start + size
        return start

    def follows(self, other: Segment) -> bool:
        """This segment starts right after ``other`` ends: together they are one span."""
        return self.start == other.end + 1

    def __repr__(self) -> str:
        return f"Segment({self.start}..{self.end}, next={self.next})"


async def what_is_left(
    take: Callable[[int], Awaitable[Granted]],
    namespace: str,
    length: int,
    *,
    size: int = 1,
    elsewhere: int = 0,
) -> Granted:
    """``take(length)``; near the end of ``namespace``, where that many IDs no longer fit,
    ``take`` of what is left, when a request of ``size`` fits in it.

    Args:
        elsewhere: IDs of the namespace the caller still holds, added to what an
            exhausted namespace reports as left.

    Raises:
        NamespaceExhausted: fewer than ``size`` IDs are left.
    """
    try:
        return await take(length)
    except NamespaceExhausted as exhausted:
        if exhausted.remaining < size:
            raise NamespaceExhausted(namespace, size, exhausted.remaining + elsewhere) from None
        return await take(exhausted.remaining)
