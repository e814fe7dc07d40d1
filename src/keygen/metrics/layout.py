"""Where each counter lives in a worker's shared-memory file, and the labels it can take.

Every label a counter takes comes from a fixed, bounded list (Prometheus's advice, and what
lets each worker keep its counters at fixed offsets of one file): a status or an endpoint
outside its list is counted as ``other``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from typing import Final

from keygen import errors
from keygen.ranges import SOURCES

__all__ = [
    "CODES",
    "COUNTED_SOURCES",
    "ENDPOINTS",
    "LATENCY_BUCKETS",
    "LAYOUT",
    "OTHER",
    "RECENT_SAMPLES",
    "SOURCES",
    "STATUSES",
    "Layout",
]

OTHER: Final = "other"

#: The sources allocations are counted by: a dispenser of another name counts as ``other``.
COUNTED_SOURCES: Final = (*SOURCES, OTHER)

#: Upper bounds (seconds) of the allocation latency histogram, up to ALLOCATION_TIMEOUT.
LATENCY_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

#: How many recent requests per worker the JSON percentiles are computed over.
RECENT_SAMPLES: Final = 4096

#: The paths whose responses are counted by path; any other is ``other``.
ENDPOINTS: Final = (
    "/allocate",
    "/health",
    "/health/live",
    "/health/ready",
    "/metrics",
    "/metrics/history",
    "/alerts",
    "/dashboard",
    "/docs",
    "/openapi.json",
    OTHER,
)

#: The statuses counted by value; any other is ``other``.
STATUSES: Final = (
    "200",
    "307",
    "400",
    "401",
    "403",
    "404",
    "405",
    "408",
    "409",
    "413",
    "415",
    "422",
    "429",
    "500",
    "503",
    OTHER,
)


def _codes() -> Iterator[str]:
    # The classes of errors.py only: the layout must not depend on what else was imported.
    for value in vars(errors).values():
        if isinstance(value, type) and issubclass(value, errors.ServiceError):
            yield value.code


#: The error codes a request can be refused with (every ServiceError's code).
CODES: Final = (*sorted(set(_codes())), OTHER)


class Layout:
    """Offsets of the integer and float slots of one worker's file, after its header."""

    MAGIC: Final = b"KEYGENM1"
    HEADER_BYTES: Final = 64  # magic, layout hash, pid, start time: padded to a cache line

    def __init__(self) -> None:
        self._ints = 0
        self._floats = 0
        self.allocated = self._int(len(COUNTED_SOURCES))  # successes by source
        self.failed = self._int(1)
        self.ids_allocated = self._int(1)
        self.latency_buckets = self._int(len(LATENCY_BUCKETS) + 1)  # the last is +Inf
        self.recent_count = self._int(1)
        self.responses = self._int(len(ENDPOINTS) * len(STATUSES))
        self.rejected = self._int(len(CODES))
        self.int_slots = self._ints
        self.latency_sum = self._float(1)
        self.recent = self._float(RECENT_SAMPLES)
        self.float_slots = self._floats
        self.size = self.HEADER_BYTES + 8 * (self.int_slots + self.float_slots)
        # Files of another layout (an older Keygen) are not read as this one.
        self.fingerprint = hash_of(
            (COUNTED_SOURCES, LATENCY_BUCKETS, ENDPOINTS, STATUSES, CODES, RECENT_SAMPLES)
        )

    def _int(self, count: int) -> int:
        offset, self._ints = self._ints, self._ints + count
        return offset

    def _float(self, count: int) -> int:
        offset, self._floats = self._floats, self._floats + count
        return offset

    def response(self, endpoint: int, status: int) -> int:
        return self.responses + endpoint * len(STATUSES) + status


def hash_of(parts: Sequence[object]) -> int:
    """A stable fingerprint (``hash()`` of a str differs between processes)."""
    return zlib.crc32(repr(parts).encode()) | (len(repr(parts)) << 32)


LAYOUT: Final = Layout()
