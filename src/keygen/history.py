"""The instance's key figures over time: a point a second for an hour, a point a minute for
a day, in two fixed-size ring files of the data dir (so a restart keeps them).

One worker of the instance records (the one holding ``history.lock`` of the data dir; when
it exits another takes over); any process reads. Each point is the time and one float per
field of ``FIELDS``, NaN where there is nothing to say (no request in that second, a layer
not configured). Memory and disk are bounded: ``(3600 + 1440) * (1 + len(FIELDS)) * 8``
bytes, about a megabyte.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import mmap
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from keygen.histogram import quantile
from keygen.metrics import InstanceView
from keygen.metrics.layout import LATENCY_BUCKETS, SOURCES, hash_of
from keygen.snapshots import HistoryDocument

__all__ = ["FIELDS", "HISTORY_LOCK", "History", "Totals"]

FIELDS: Final = (
    "requests_per_second",
    "error_rate",
    *(f"rate_{source}" for source in SOURCES),
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    *(f"layer_up_{source}" for source in SOURCES),
    *(f"breaker_open_{source}" for source in SOURCES),
    "reserve_remaining_ids",
    "reserve_remaining_seconds",
    "redis_failovers",
    "active_locks",
)

SECONDS: Final = 3600  # points of the per-second ring
MINUTES: Final = 1440  # points of the per-minute ring
MAX_WINDOW: Final = 24 * 3600
#: The lock the recording worker holds in the data dir while the instance runs.
HISTORY_LOCK: Final = "history.lock"
_HEADER = struct.Struct("<8sqqq")  # magic, fields fingerprint, capacity, points written
_MAGIC = b"KGHIST01"
_FINGERPRINT = hash_of(FIELDS)


@dataclass(frozen=True)
class Totals:
    """The cumulative counters a point is the difference of."""

    at: float
    by_source: dict[str, int]
    failed: int
    buckets: list[int]

    @classmethod
    def of(cls, view: InstanceView, at: float) -> Totals:
        c = view.counters
        return cls(at, c.by_source, c.failed, c.bucket_counts)


def point(view: InstanceView, now: Totals, before: Totals) -> list[float]:
    """The figures between ``before`` and ``now``, in the order of ``FIELDS``."""
    seconds = max(now.at - before.at, 1e-9)
    served = {s: now.by_source.get(s, 0) - before.by_source.get(s, 0) for s in SOURCES}
    failed = now.failed - before.failed
    requests = sum(served.values()) + failed
    buckets = [a - b for a, b in zip(now.buckets, before.buckets, strict=True)]
    up = view.layer_up()
    breakers = view.breaker_open()
    reserve = view.reserve()
    left = [f.seconds_left for f in reserve.values() if f.seconds_left is not None]
    failovers = view.failovers()

    def ms(q: float) -> float:
        value = quantile(q, LATENCY_BUCKETS, buckets)
        return math.nan if value is None else 1000 * value

    return [
        requests / seconds,
        failed / requests if requests else math.nan,
        *(served[s] / seconds for s in SOURCES),
        ms(0.5),
        ms(0.95),
        ms(0.99),
        *(float(up[s]) if s in up else math.nan for s in SOURCES),
        *(float(breakers[s]) if s in breakers else math.nan for s in SOURCES),
        float(sum(f.remaining for f in reserve.values())) if reserve else math.nan,
        min(left) if left else math.nan,
        math.nan if failovers is None else float(failovers),
        float(view.active_locks()),
    ]


class _Ring:
    """Points in a file, the oldest overwritten first."""

    def __init__(self, path: Path, capacity: int) -> None:
        self.capacity = capacity
        self.width = 1 + len(FIELDS)
        size = _HEADER.size + 8 * capacity * self.width
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size != size or not self._valid(fd):
                os.ftruncate(fd, 0)  # another layout (or damaged): start over
                os.ftruncate(fd, size)
                os.pwrite(fd, _HEADER.pack(_MAGIC, _FINGERPRINT, capacity, 0), 0)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._values = memoryview(self._map)[_HEADER.size :].cast("d")

    def _valid(self, fd: int) -> bool:
        magic, fingerprint, capacity, _ = _HEADER.unpack(os.pread(fd, _HEADER.size, 0))
        return (magic, fingerprint, capacity) == (_MAGIC, _FINGERPRINT, self.capacity)

    @property
    def written(self) -> int:
        return int(_HEADER.unpack_from(self._map, 0)[3])

    def append(self, at: float, values: Sequence[float]) -> None:
        written = self.written
        start = (written % self.capacity) * self.width
        self._values[start] = at
        for i, value in enumerate(values):
            self._values[start + 1 + i] = value
        # The count last: a reader never sees a point before all of it is written.
        struct.pack_into("<q", self._map, 24, written + 1)

    def since(self, oldest: float) -> list[list[float]]:
        written = self.written
        rows = []
        for n in range(max(0, written - self.capacity), written):
            start = (n % self.capacity) * self.width
            row = list(self._values[start : start + self.width])
            if row[0] >= oldest:
                rows.append(row)
        return rows

    def close(self) -> None:
        self._values.release()
        with contextlib.suppress(BufferError):
            self._map.close()


class History:
    """The history of the instance whose data dir is ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_path = data_dir / HISTORY_LOCK
        self._lock: int | None = None
        # Every worker opens the files; one at a time, so only one ever starts them over.
        opening = os.open(data_dir / "history.open.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(opening, fcntl.LOCK_EX)
            self._seconds = _Ring(data_dir / "history-seconds.bin", SECONDS)
            self._minutes = _Ring(data_dir / "history-minutes.bin", MINUTES)
        finally:
            os.close(opening)
        self._last: Totals | None = None
        self._minute_start: Totals | None = None

    def try_lead(self) -> bool:
        """Whether this process records (taking the lock if nobody holds it)."""
        if self._lock is not None:
            return True
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock = fd
        return True

    def record(self, view: InstanceView, at: float) -> None:
        """Add the point for the second that ends at ``at`` (and the minute's, when one ends)."""
        now = Totals.of(view, at)
        if self._last is not None and now.at > self._last.at:
            self._seconds.append(at, point(view, now, self._last))
        if self._minute_start is None:
            self._minute_start = now
        elif int(at // 60) != int(self._minute_start.at // 60):
            self._minutes.append(at, point(view, now, self._minute_start))
            self._minute_start = now
        self._last = now

    def document(self, window: float, now: float) -> HistoryDocument:
        """The points of the last ``window`` seconds: per second up to an hour, else per
        minute."""
        per_second = window <= SECONDS
        rows = (self._seconds if per_second else self._minutes).since(now - window)
        columns: dict[str, list[float | None]] = {"time": []}
        for name in FIELDS:
            columns[name] = []
        for row in rows:
            columns["time"].append(row[0])
            for name, value in zip(FIELDS, row[1:], strict=True):
                columns[name].append(None if math.isnan(value) else round(value, 3))
        return HistoryDocument(int(window), 1 if per_second else 60, columns)

    def close(self) -> None:
        self._seconds.close()
        self._minutes.close()
        if self._lock is not None:
            os.close(self._lock)  # releases the lock: another process may record
            self._lock = None
