"""The emergency reserve's state in memory: the reserves held, and the rates they are for.

``reserve.py`` owns the journal and the keeper; these are the values it works with.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Final

from keygen.dispensers.segment import Segment
from keygen.snapshots import ReserveNamespaceSnapshot

__all__ = ["MARK_CHUNKS", "RATE_WINDOW", "HeldReserve", "Rate", "namespace_snapshot"]

#: The journal's mark runs ahead of the cursor by this fraction of the reserve.
MARK_CHUNKS: Final = 64
#: Seconds of allocations the rate (and so "minutes left") is measured over.
RATE_WINDOW: Final = 60


class HeldReserve(Segment):
    """A reserve in memory: IDs ``next..end`` are left; ``start..durable`` are journaled."""

    __slots__ = (
        "durable",
        "first",
        "held_since",
        "namespace",
        "prefetching",
        "recorded",
        "retired",
    )

    def __init__(
        self, namespace: str, start: int, end: int, mark: int, *, recorded: int | None = None
    ) -> None:
        # After a restart the cursor resumes above everything possibly handed out.
        super().__init__(start, end, next_id=mark + 1)
        self.namespace = namespace
        self.durable = mark  # highest ID the journal's mark covers
        self.first = mark + 1  # the first ID this process may serve of it
        #: The mark last recorded in the ledger for this process (None: none yet).
        self.recorded = recorded
        self.prefetching = False  # a task raising the mark ahead of need is scheduled
        self.retired: str | None = None
        self.held_since = time.monotonic()

    @property
    def used_end(self) -> int:
        return self.next - 1

    @property
    def chunk(self) -> int:
        return max(1, (self.end - self.start + 1) // MARK_CHUNKS)

    def key(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "start": self.start}


def namespace_snapshot(reserve: HeldReserve | None, per_minute: float) -> ReserveNamespaceSnapshot:
    if reserve is None:
        return ReserveNamespaceSnapshot(
            held=False, ids_per_minute=round(per_minute, 1), minutes_left=None
        )
    return ReserveNamespaceSnapshot(
        held=True,
        start=reserve.start,
        end=reserve.end,
        remaining=reserve.remaining,
        used=reserve.used_end - reserve.start + 1,
        journaled_mark=reserve.durable,
        ids_per_minute=round(per_minute, 1),
        minutes_left=round(reserve.remaining / per_minute, 2) if per_minute > 0 else None,
    )


class Rate:
    """IDs allocated per second over the last minute, in one-second buckets."""

    __slots__ = ("buckets",)

    def __init__(self) -> None:
        self.buckets: deque[list[int]] = deque()

    def add(self, ids: int, now: float) -> None:
        second = int(now)
        buckets = self.buckets
        if buckets and buckets[-1][0] == second:
            buckets[-1][1] += ids
            return
        buckets.append([second, ids])
        while buckets[0][0] <= second - RATE_WINDOW:
            buckets.popleft()

    def per_minute(self, now: float) -> float:
        live = [(second, ids) for second, ids in self.buckets if second > now - RATE_WINDOW]
        if not live:
            return 0.0
        covered = max(1.0, now - live[0][0])
        return 60 * sum(ids for _, ids in live) / covered
