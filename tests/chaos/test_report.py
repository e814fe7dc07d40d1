"""The chaos report's arithmetic (windows, unexpected failures, recovery, percentiles), and
the plans and fault kinds it is built on."""

from __future__ import annotations

import argparse
import itertools
from typing import Any

import pytest

from keygen.chaos.cli import _kinds
from keygen.chaos.faults import (
    ALL_LAYERS_DOWN,
    FAULT_KINDS,
    FAULTS,
    KNOWN_KINDS,
    OVERLAPPING_KINDS,
    FaultWindow,
)
from keygen.chaos.nemesis import plan_random, plan_short
from keygen.chaos.report import Ack, Failure, build_report, markdown, percentiles
from keygen.checker import Record

T0 = 1000.0


def ack(
    start: int, sent: float, latency: float = 0.01, source: str = "redis_sentinel", size: int = 10
) -> Ack:
    record = Record("default", start, start + size - 1, size, size, source)
    return Ack(record, T0 + sent, T0 + sent + latency)


def window(kind: str, start: float, end: float, *, all_down: bool = False) -> FaultWindow:
    return FaultWindow(kind, T0 + start, T0 + end, all_layers_down=all_down)


def report_of(
    acks: list[Ack], failures: list[Failure], windows: list[FaultWindow]
) -> dict[str, Any]:
    return build_report(acks, failures, windows, started=T0, ended=T0 + 60)


def test_percentiles_nearest_rank_in_milliseconds() -> None:
    """Percentiles are nearest-rank, in milliseconds; empty input gives None."""
    values = [i / 1000 for i in range(1, 101)]
    assert percentiles(values) == {
        "p50": 50.0,
        "p90": 90.0,
        "p99": 99.0,
        "p99.9": 100.0,
        "max": 100.0,
    }
    assert percentiles([])["p50"] is None


def test_failures_inside_all_down_windows_are_expected_others_are_not() -> None:
    """A failure overlapping an all-layers-down window is expected; one in another window or
    outside every window is unexpected and fails the run."""
    windows = [window("all-down", 10, 20, all_down=True), window("postgres-kill", 30, 35)]
    failures = [
        Failure(T0 + 19.5, T0 + 21.0, "http 503 unavailable"),  # sent inside, failed after
        Failure(T0 + 31.0, T0 + 31.5, "ReadTimeout"),
        Failure(T0 + 50.0, T0 + 50.1, "ConnectError"),
    ]
    report = report_of([ack(1, 1)], failures, windows)
    assert report["failed"] == 3
    assert report["failures_outside_windows"] == 1
    assert report["unexpected_failures"] == 2
    assert [row["failed"] for row in report["faults"]] == [1, 1]
    assert not report["passed"]


def test_duplicates_fail_the_run() -> None:
    """Two acknowledged ranges sharing IDs are reported by the checker and fail the run."""
    report = report_of([ack(1, 1), ack(5, 2)], [], [])
    assert report["checker"]["duplicate_ids"] == 6
    assert not report["passed"]


def test_recovery_times_to_full_service_and_to_primary() -> None:
    """Full service returns with the first success sent after the last failure; the primary
    layer with the first redis_sentinel success sent after the last fallback."""
    windows = [window("all-down", 10, 14, all_down=True)]
    acks = [
        ack(1, 9.0),
        ack(100, 10.5, source="emergency_reserve"),
        ack(200, 15.0, source="postgresql"),
        ack(300, 15.5, latency=0.05),  # redis again
        ack(400, 16.0),
    ]
    failures = [Failure(T0 + 11.0, T0 + 13.0, "http 503 unavailable")]
    report = report_of(acks, failures, windows)
    row = report["faults"][0]
    assert row["to_full_service_s"] == 5.01  # ack sent at 15.0, acknowledged at 15.01
    assert row["to_primary_s"] == 5.55
    assert row["left_primary"]
    assert report["recovery_by_kind"]["all-down"] == {
        "faults": 1,
        "failed": 1,
        "to_full_service_s": {"median": 5.01, "max": 5.01, "never": 0},
        "to_primary_s": {"median": 5.55, "max": 5.55, "never": 0},
    }
    assert row["sources"] == {"emergency_reserve": 1}
    assert report["passed"]
    assert report["source_mix_per_second"]["10"] == {"emergency_reserve": 1}
    assert "PASSED" in markdown(report)


def test_a_fault_that_never_left_the_primary_layer() -> None:
    """With only redis_sentinel successes in and after a window, time to primary is 0."""
    report = report_of([ack(1, 1), ack(20, 11), ack(40, 12)], [], [window("sentinel-kill", 10, 14)])
    row = report["faults"][0]
    assert row["to_primary_s"] == 0.0 and not row["left_primary"]
    assert row["to_full_service_s"] == 1.01


def test_a_fallback_caught_by_the_next_fault_counts_for_the_next_window() -> None:
    """Redis serves again right after the first window; a request sent just before the next
    fault and served by the reserve because of it does not delay the first window's return
    to the primary layer."""
    windows = [window("network-delay", 10, 14), window("all-down", 20, 24, all_down=True)]
    acks = [
        ack(100, 13.0, source="postgresql"),
        ack(200, 14.5),  # redis again, 4.51 s after the first fault began
        ack(300, 19.99, latency=0.05, source="emergency_reserve"),  # caught by all-down
        ack(400, 24.5),
    ]
    first, second = report_of(acks, [], windows)["faults"]
    assert first["to_primary_s"] == 4.51
    assert second["to_primary_s"] == 4.51


def test_plans_are_reproducible_and_cover_every_kind() -> None:
    """The short plan has every kind once; a random plan is the same for the same seed and
    covers every kind once it has as many faults as kinds."""
    assert [p.kind for p in plan_short()] == list(FAULT_KINDS)
    first = plan_random(FAULT_KINDS, 600, seed=7)
    assert first == plan_random(FAULT_KINDS, 600, seed=7)
    assert first != plan_random(FAULT_KINDS, 600, seed=8)
    assert set(p.kind for p in first[: len(FAULT_KINDS)]) == set(FAULT_KINDS)
    assert all(b.at >= a.at + a.hold for a, b in itertools.pairwise(first))


def test_retried_attempts_are_counted_per_window() -> None:
    """Attempts the client retried are counted in the window they happened in, or outside."""
    windows = [window("instance-kill", 10, 14)]
    attempts = [(T0 + 11, "ConnectError"), (T0 + 12, "http 503"), (T0 + 30, "ReadError")]
    report = build_report([ack(1, 1)], [], windows, started=T0, ended=T0 + 60, attempts=attempts)
    assert report["faults"][0]["retried_attempts"] == {"ConnectError": 1, "http 503": 1}
    assert report["retried_attempts_outside_windows"] == {"ReadError": 1}
    assert report["passed"]


def test_fault_kinds_and_groups_on_the_command_line() -> None:
    """``--faults``: ``all`` is the single kinds, ``overlapping`` the pairs; names combine,
    each kind once, in order; an unknown name is refused with the known ones."""
    assert _kinds("all") == list(FAULT_KINDS)
    assert _kinds("overlapping") == list(OVERLAPPING_KINDS)
    assert _kinds("all,overlapping") == list(KNOWN_KINDS)
    assert _kinds("sentinel-kill,all") == ["sentinel-kill"] + [
        k for k in FAULT_KINDS if k != "sentinel-kill"
    ]
    assert _kinds("all-down+instance-kill") == ["all-down+instance-kill"]
    with pytest.raises(argparse.ArgumentTypeError, match="overlapping"):
        _kinds("redis-master-kill,disk-full")
    with pytest.raises(ValueError, match="unknown fault kind"):
        plan_short(["disk-full"])


def test_every_overlapping_kind_is_two_known_kinds_and_has_an_action() -> None:
    """Each pair names two single kinds, and the nemesis has an action for it; the pairs
    that leave only the reserve are marked so."""
    for kind in OVERLAPPING_KINDS:
        first, second = kind.split("+")
        assert first in FAULT_KINDS and second in FAULT_KINDS
        assert FAULTS[kind].steps and all(callable(step) for step in FAULTS[kind].steps)
    assert {k for k in OVERLAPPING_KINDS if k in ALL_LAYERS_DOWN} == {
        "postgres-kill+redis-master-kill",
        "all-down+instance-kill",
    }
