"""The independent checker: did any two acknowledged ranges share an ID?

It knows nothing about how ranges were made. It takes every range a client was given (the
JSON bodies of successful ``POST /allocate`` responses, one per line in a file, optionally
with the ``requested`` size the client asked for) and checks, in O(n log n):

* no ID belongs to two ranges of the same namespace;
* each range's ``size`` equals ``end - start + 1`` and the size that was requested;
* every ID is within ``MIN_ID..MAX_ID``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from keygen.constants import DEFAULT_NAMESPACE, MAX_ID, MIN_ID
from keygen.ranges import IdRange

__all__ = ["Record", "Verdict", "check", "find_overlaps", "read_records"]


@dataclass(frozen=True, slots=True)
class Record:
    """One acknowledged allocation as a client saw it."""

    namespace: str
    start: int
    end: int
    size: int
    requested: int | None = None
    source: str | None = None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Record:
        """A record from a ``POST /allocate`` response (and the ``requested`` size, if the
        client noted it); the namespace defaults as the service's does."""
        return msgspec.convert({"namespace": DEFAULT_NAMESPACE, **body}, cls, strict=False)

    @classmethod
    def of(cls, id_range: IdRange, requested: int | None = None) -> Record:
        return cls(id_range.namespace, id_range.start, id_range.end, id_range.size, requested)


@dataclass
class Verdict:
    """What the checker found."""

    ranges: int = 0
    ids: int = 0
    duplicate_ids: int = 0
    overlaps: list[tuple[Record, Record]] = field(default_factory=list)
    bad_sizes: list[Record] = field(default_factory=list)
    out_of_bounds: list[Record] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.overlaps or self.bad_sizes or self.out_of_bounds)

    def summary(self) -> str:
        verdict = "OK" if self.ok else "VIOLATION"
        return (
            f"{verdict}: {self.ranges} ranges, {self.ids} IDs, "
            f"{len(self.overlaps)} overlapping pairs ({self.duplicate_ids} duplicate IDs), "
            f"{len(self.bad_sizes)} wrong sizes, {len(self.out_of_bounds)} out of bounds"
        )


def find_overlaps(records: Iterable[Record]) -> tuple[list[tuple[Record, Record]], int]:
    """Return the overlapping pairs found by a sweep, and how many IDs were given out twice.

    Each range that overlaps an earlier one is reported once, paired with the earlier range
    reaching furthest; the duplicate count is exact (total IDs minus distinct IDs).
    """
    ordered = sorted(records, key=lambda r: (r.namespace, r.start, r.end))
    pairs: list[tuple[Record, Record]] = []
    duplicates = 0
    reach: Record | None = None  # the range, so far in this namespace, that ends last
    for record in ordered:
        if reach is None or reach.namespace != record.namespace or record.start > reach.end:
            reach = record
            continue
        pairs.append((reach, record))
        duplicates += min(record.end, reach.end) - record.start + 1
        if record.end > reach.end:
            reach = record
    return pairs, duplicates


def check(records: Iterable[Record]) -> Verdict:
    """Check every acknowledged range; see the module docstring for what is checked."""
    records = list(records)
    verdict = Verdict(ranges=len(records))
    for record in records:
        width = record.end - record.start + 1
        verdict.ids += max(width, 0)
        if width != record.size or (record.requested is not None and width != record.requested):
            verdict.bad_sizes.append(record)
        if record.start < MIN_ID or record.end > MAX_ID:
            verdict.out_of_bounds.append(record)
    verdict.overlaps, verdict.duplicate_ids = find_overlaps(records)
    return verdict


def read_records(paths: Iterable[Path]) -> Iterator[Record]:
    """Read JSON-lines files of acknowledged allocations; blank lines are skipped."""
    for path in paths:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    yield Record.from_json(json.loads(line))
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(f"{path}:{number}: not an allocation record: {exc}") from exc
