"""The overlap checker finds every kind of violation, and passes clean histories."""

from __future__ import annotations

import json
import random
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from keygen.checker import Record, check, read_records
from keygen.constants import MAX_ID


def rec(start: int, end: int, namespace: str = "default", requested: int | None = None) -> Record:
    return Record(namespace, start, end, end - start + 1, requested)


def test_disjoint_ranges_pass() -> None:
    """Adjacent and separated ranges are not overlaps."""
    verdict = check([rec(1, 10), rec(11, 20), rec(100, 100)])
    assert verdict.ok
    assert verdict.ids == 21


def test_shared_id_is_found() -> None:
    """Two ranges sharing a single ID are reported, with the exact duplicate count."""
    verdict = check([rec(1, 10), rec(10, 20)])
    assert not verdict.ok
    assert len(verdict.overlaps) == 1
    assert verdict.duplicate_ids == 1


def test_contained_range_is_found() -> None:
    """A range inside another is an overlap, even when a later range is disjoint again."""
    verdict = check([rec(1, 100), rec(5, 6), rec(50, 60), rec(101, 200)])
    assert len(verdict.overlaps) == 2
    assert verdict.duplicate_ids == 2 + 11


def test_namespaces_are_independent() -> None:
    """The same IDs in two namespaces are not duplicates."""
    assert check([rec(1, 10, "a"), rec(1, 10, "b")]).ok


def test_wrong_size_and_bounds_are_found() -> None:
    """A size that disagrees with start..end or the request, and IDs outside 1..2**63-1, fail."""
    lying = Record("default", 1, 10, 11)
    short = rec(20, 29, requested=11)
    verdict = check([lying, short, rec(0, 5, "x"), rec(MAX_ID, MAX_ID + 1, "y")])
    assert verdict.bad_sizes == [lying, short]
    assert len(verdict.out_of_bounds) == 2


def test_reads_json_lines(tmp_path: Path) -> None:
    """Allocation responses written one per line are read back as records."""
    path = tmp_path / "acks.jsonl"
    path.write_text(
        json.dumps({"start": 1, "end": 5, "size": 5, "namespace": "a", "source": "sqlite"})
        + "\n\n"
        + json.dumps({"start": 3, "end": 4, "size": 2, "namespace": "a", "requested": 2})
        + "\n"
    )
    verdict = check(read_records([path]))
    assert verdict.ranges == 2
    assert verdict.duplicate_ids == 2


@given(st.lists(st.tuples(st.integers(1, 200), st.integers(1, 20)), max_size=60))
def test_duplicate_count_matches_brute_force(spans: list[tuple[int, int]]) -> None:
    """On random ranges the sweep's verdict agrees with counting every ID one by one."""
    records = [rec(start, start + length - 1) for start, length in spans]
    random.Random(0).shuffle(records)
    seen: dict[int, int] = {}
    for r in records:
        for i in range(r.start, r.end + 1):
            seen[i] = seen.get(i, 0) + 1
    expected_duplicates = sum(count - 1 for count in seen.values())
    verdict = check(records)
    assert verdict.duplicate_ids == expected_duplicates
    assert verdict.ok == (expected_duplicates == 0)
