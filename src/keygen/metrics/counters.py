"""Counters that every worker process of an instance writes, and any of them reads.

Each worker owns one file in the instance's run directory (``KEYGEN_RUN_DIR``, which
``keygen serve`` makes fresh for each start) and maps it into memory: counting a request is
a few stores into that mapping, no lock and no system call, because each file has exactly
one writer. Whichever worker answers a scrape maps every worker's file and adds them up, so
``/metrics`` and ``/health`` count the whole instance however the connections are spread.

The file of a worker that has exited stays, so the instance's counters never go back. An
aligned 8-byte store is atomic on the machines we run on, so a reader sees each counter
either before or after an increment, never torn.
"""

from __future__ import annotations

import bisect
import contextlib
import mmap
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from keygen.metrics.layout import (
    CODES,
    COUNTED_SOURCES,
    ENDPOINTS,
    LATENCY_BUCKETS,
    LAYOUT,
    RECENT_SAMPLES,
    STATUSES,
)

__all__ = ["Counters", "InstanceCounters", "read_instance"]

_HEADER = struct.Struct("<8sqqd")  # magic, fingerprint, pid, started_at
_FILE_PREFIX = "counters-"
_SOURCE_INDEX = {source: i for i, source in enumerate(COUNTED_SOURCES)}
_OTHER_SOURCE = len(COUNTED_SOURCES) - 1
_ENDPOINT_INDEX = {endpoint: i for i, endpoint in enumerate(ENDPOINTS)}
#: By the status as a number: a response is counted without formatting its status.
_STATUS_INDEX = {int(status): i for i, status in enumerate(STATUSES) if status.isdigit()}
_CODE_INDEX = {code: i for i, code in enumerate(CODES)}
# The slots counted on every request, looked up once rather than on the LAYOUT each time.
_ALLOCATED = LAYOUT.allocated
_IDS_ALLOCATED = LAYOUT.ids_allocated
_LATENCY_SUM = LAYOUT.latency_sum
_LATENCY_BUCKETS = LAYOUT.latency_buckets
_RECENT = LAYOUT.recent
_RECENT_COUNT = LAYOUT.recent_count
_bucket = bisect.bisect_left
_OTHER_ENDPOINT = len(ENDPOINTS) - 1
_OTHER_STATUS = len(STATUSES) - 1
_OTHER_CODE = len(CODES) - 1


class Counters:
    """This process's counters, mapped from its file in ``run_dir`` (or from anonymous
    memory when there is none: a process on its own)."""

    def __init__(self, run_dir: Path | None = None) -> None:
        self.pid = os.getpid()
        self.path = None if run_dir is None else run_dir / f"{_FILE_PREFIX}{self.pid}"
        if self.path is None:
            self._map = mmap.mmap(-1, LAYOUT.size)
        else:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.ftruncate(fd, LAYOUT.size)
                self._map = mmap.mmap(fd, LAYOUT.size)
            finally:
                os.close(fd)
        _HEADER.pack_into(self._map, 0, LAYOUT.MAGIC, LAYOUT.fingerprint, self.pid, time.time())
        body = memoryview(self._map)[LAYOUT.HEADER_BYTES :]
        self.ints = body[: 8 * LAYOUT.int_slots].cast("q")
        self.floats = body[8 * LAYOUT.int_slots :].cast("d")

    # -- the hot path: a handful of stores each ---------------------------------------------

    def record_success(self, source: str, size: int, seconds: float) -> None:
        ints = self.ints
        ints[_ALLOCATED + _SOURCE_INDEX.get(source, _OTHER_SOURCE)] += 1
        ints[_IDS_ALLOCATED] += size
        self._latency(seconds)

    def record_failure(self, seconds: float) -> None:
        self.ints[LAYOUT.failed] += 1
        self._latency(seconds)

    def _latency(self, seconds: float) -> None:
        ints, floats = self.ints, self.floats
        floats[_LATENCY_SUM] += seconds
        ints[_LATENCY_BUCKETS + _bucket(LATENCY_BUCKETS, seconds)] += 1
        count = ints[_RECENT_COUNT]
        floats[_RECENT + count % RECENT_SAMPLES] = seconds
        ints[_RECENT_COUNT] = count + 1

    def record_response(self, path: str, status: int) -> None:
        endpoint = _ENDPOINT_INDEX.get(path, _OTHER_ENDPOINT)
        code = _STATUS_INDEX.get(status, _OTHER_STATUS)
        self.ints[LAYOUT.response(endpoint, code)] += 1

    def record_rejected(self, code: str) -> None:
        self.ints[LAYOUT.rejected + _CODE_INDEX.get(code, _OTHER_CODE)] += 1

    def close(self) -> None:
        """Unmap (the file stays: its counts are part of the instance's)."""
        self.ints.release()
        self.floats.release()
        with contextlib.suppress(BufferError):
            self._map.close()


@dataclass
class InstanceCounters:
    """Every worker's counters added up, and which workers are alive."""

    ints: list[int] = field(default_factory=lambda: [0] * LAYOUT.int_slots)
    latency_sum: float = 0.0
    recent: list[float] = field(default_factory=list)
    workers: dict[int, bool] = field(default_factory=dict)  # pid -> alive

    def add(self, worker: Counters | _Snapshot) -> None:
        ints = worker.ints
        for i in range(LAYOUT.int_slots):
            self.ints[i] += ints[i]
        floats = worker.floats
        self.latency_sum += floats[LAYOUT.latency_sum]
        count = min(ints[LAYOUT.recent_count], RECENT_SAMPLES)
        self.recent.extend(floats[LAYOUT.recent : LAYOUT.recent + count])

    @property
    def by_source(self) -> dict[str, int]:
        return {
            s: self.ints[LAYOUT.allocated + i]
            for i, s in enumerate(COUNTED_SOURCES)
            if self.ints[LAYOUT.allocated + i]
        }

    @property
    def failed(self) -> int:
        return self.ints[LAYOUT.failed]

    @property
    def ids_allocated(self) -> int:
        return self.ints[LAYOUT.ids_allocated]

    @property
    def bucket_counts(self) -> list[int]:
        start = LAYOUT.latency_buckets
        return self.ints[start : start + len(LATENCY_BUCKETS) + 1]

    def responses(self) -> dict[tuple[str, str], int]:
        return {
            (endpoint, status): count
            for e, endpoint in enumerate(ENDPOINTS)
            for s, status in enumerate(STATUSES)
            if (count := self.ints[LAYOUT.response(e, s)])
        }

    def rejected(self) -> dict[str, int]:
        return {code: n for i, code in enumerate(CODES) if (n := self.ints[LAYOUT.rejected + i])}


@dataclass
class _Snapshot:
    ints: memoryview[int]
    floats: memoryview[float]


def read_instance(run_dir: Path | None, own: Counters) -> InstanceCounters:
    """The instance's counters: ``own`` (live, this process) plus every other worker's file
    in ``run_dir``."""
    total = InstanceCounters()
    total.add(own)
    total.workers[own.pid] = True
    if run_dir is None:
        return total
    for path in sorted(run_dir.glob(f"{_FILE_PREFIX}*")):
        if path == own.path:
            continue
        try:
            data = path.read_bytes()  # a copy: the writer goes on meanwhile
        except OSError:
            continue  # removed meanwhile
        if len(data) != LAYOUT.size:
            continue
        magic, fingerprint, pid, _ = _HEADER.unpack_from(data, 0)
        if magic != LAYOUT.MAGIC or fingerprint != LAYOUT.fingerprint:
            continue
        body = memoryview(data)[LAYOUT.HEADER_BYTES :]
        total.add(
            _Snapshot(
                body[: 8 * LAYOUT.int_slots].cast("q"), body[8 * LAYOUT.int_slots :].cast("d")
            )
        )
        total.workers[pid] = is_alive(pid)
    return total


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
