"""The chaos run's report: what was acknowledged, what failed and when, how fast it healed.

``build_report`` reads the load's ``acks.jsonl`` and ``failures.jsonl`` and the nemesis's
fault windows and computes (all times ``time.time()`` seconds, durations in seconds):

* acknowledged allocations and IDs, and the checker's verdict over every acknowledged range;
* failed requests by cause and by fault window: a failure belongs to the window its request
  overlapped (sent before the window closed, failed after it opened), else to ``outside``.
  Failures outside every all-layers-down window are *unexpected*: they fail the run;
* latency percentiles (sending to acknowledgement, retries included) overall and for the
  requests sent inside each window;
* per window, the time from its start to full service (the first success of a request sent
  after the window's last failure) and to the primary layer again (the first
  ``redis_sentinel`` success sent after the last request that another layer served or that
  failed, up to 30 s after the window);
* the source mix per one-second bucket, and IDs wasted as the instances report them.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from keygen.chaos.faults import FaultWindow
from keygen.checker import Record, check
from keygen.constants import SOURCE_REDIS
from keygen.snapshots import HealthSnapshot

__all__ = ["Ack", "Failure", "build_report", "markdown", "percentiles", "read_jsonl"]

#: How long after a window closes its effects still count as its own.
AFTERMATH = 30.0
PERCENTILES = (50, 90, 99, 99.9)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Ack:
    record: Record
    sent_at: float
    acked_at: float

    @property
    def latency(self) -> float:
        return self.acked_at - self.sent_at


@dataclass(frozen=True, slots=True)
class Failure:
    sent_at: float
    failed_at: float
    cause: str


def read_jsonl(path: Path) -> Iterable[dict[str, Any]]:
    if not path.exists():
        return
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash of the generator itself


def read_acks(path: Path) -> list[Ack]:
    return [
        Ack(Record.from_json(d), float(d["sent_at"]), float(d["acked_at"]))
        for d in read_jsonl(path)
    ]


def read_failures(path: Path) -> list[Failure]:
    return [
        Failure(float(d["sent_at"]), float(d["failed_at"]), str(d["cause"]))
        for d in read_jsonl(path)
    ]


def read_attempts(path: Path) -> list[tuple[float, str]]:
    return [(float(d["at"]), str(d["cause"])) for d in read_jsonl(path)]


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50/p90/p99/p99.9 and max in milliseconds (nearest rank); None when empty."""
    ordered = sorted(values)
    result: dict[str, float | None] = {}
    for p in PERCENTILES:
        if not ordered:
            result[f"p{p:g}"] = None
            continue
        rank = max(0, math.ceil(p / 100 * len(ordered)) - 1)
        result[f"p{p:g}"] = round(ordered[rank] * 1000, 2)
    result["max"] = round(ordered[-1] * 1000, 2) if ordered else None
    return result


class _Timeline:
    """The run's records and fault windows, in time order."""

    def __init__(
        self,
        acks: Sequence[Ack],
        failures: Sequence[Failure],
        windows: Sequence[FaultWindow],
        started: float,
        ended: float,
    ) -> None:
        self.acks = sorted(acks, key=lambda a: a.acked_at)
        self.acked_at = [a.acked_at for a in self.acks]
        self.failures = sorted(failures, key=lambda f: f.failed_at)
        self.windows = sorted(windows, key=lambda w: w.start)
        self.starts = [w.start for w in self.windows]
        self.started, self.ended = started, ended

    def limit(self, i: int) -> float:
        """Until when window ``i``'s effects may count as its own: the next one's start."""
        return self.windows[i + 1].start if i + 1 < len(self.windows) else self.ended

    def acked_from(self, moment: float) -> Iterator[Ack]:
        """The acks acknowledged at or after ``moment``, in order."""
        return itertools.islice(self.acks, bisect.bisect_left(self.acked_at, moment), None)

    def window_of(self, sent: float, done: float) -> int | None:
        """The window a request [sent, done] overlapped (the latest opened before done)."""
        i = bisect.bisect_right(self.starts, done) - 1
        while i >= 0:
            end = self.windows[i].end or math.inf
            if sent <= end and done >= self.windows[i].start:
                return i
            if end < sent:
                return None
            i -= 1
        return None

    def by_window(
        self,
        items: Iterable[T],
        span: Callable[[T], tuple[float, float]],
    ) -> tuple[list[list[T]], list[T]]:
        """``items`` per window their ``span`` (sent, done) overlapped, and those outside."""
        inside: list[list[T]] = [[] for _ in self.windows]
        outside: list[T] = []
        for item in items:
            i = self.window_of(*span(item))
            (outside if i is None else inside[i]).append(item)
        return inside, outside


def _recovery(t: _Timeline, i: int) -> dict[str, float | None]:
    window, limit = t.windows[i], t.limit(i)
    start, end = window.start, window.end or window.start
    horizon = min(limit, end + AFTERMATH)
    failed = [f.failed_at for f in t.failures if start <= f.failed_at and f.sent_at <= horizon]
    last_failure = max(failed, default=start)
    full = next((a.acked_at for a in t.acked_from(last_failure) if a.sent_at >= last_failure), None)
    # A request sent by the horizon is acknowledged within its timeouts: a minute at most.
    window_acks = itertools.takewhile(lambda a: a.acked_at <= horizon + 60, t.acked_from(start))
    # What was served elsewhere (or failed) from the fault's start until the next fault began,
    # sent by the horizon: a request sent just before a fault and caught by it counts for that
    # fault's window, not for the previous one.
    elsewhere = [
        a.sent_at
        for a in window_acks
        if start <= a.acked_at < limit and a.sent_at <= horizon and a.record.source != SOURCE_REDIS
    ]
    elsewhere += [
        f.sent_at for f in t.failures if start <= f.failed_at < limit and f.sent_at <= horizon
    ]
    left_primary = max(elsewhere, default=None)
    primary = None
    if left_primary is not None:
        since = max(left_primary, start)
        primary = next(
            (
                a.acked_at
                for a in t.acked_from(since)
                if a.sent_at > since and a.record.source == SOURCE_REDIS
            ),
            None,
        )
    return {
        "to_full_service_s": None if full is None else round(full - start, 3),
        "to_primary_s": (
            0.0 if left_primary is None else None if primary is None else round(primary - start, 3)
        ),
        "left_primary": left_primary is not None,
    }


def _sources(acks: Iterable[Ack]) -> dict[str, int]:
    return dict(Counter(a.record.source or "?" for a in acks))


def _causes(failures: Iterable[Failure]) -> dict[str, int]:
    return dict(Counter(f.cause for f in failures))


def _window_row(
    t: _Timeline,
    i: int,
    acks: list[Ack],
    failures: list[Failure],
    attempts: list[tuple[float, str]],
) -> dict[str, Any]:
    """One fault window's row: what happened in it, and how fast it healed."""
    window = t.windows[i]
    return {
        "label": f"#{i + 1} {window.kind}",
        "kind": window.kind,
        "start_s": round(window.start - t.started, 3),
        "duration_s": round((window.end or t.ended) - window.start, 3),
        "all_layers_down": window.all_layers_down,
        "detail": window.detail,
        "error": window.error,
        "acknowledged": len(acks),
        "sources": _sources(acks),
        "failed": len(failures),
        "failures_by_cause": _causes(failures),
        "latency_ms": percentiles([a.latency for a in acks]),
        "retried_attempts": dict(Counter(cause for _, cause in attempts)),
        **_recovery(t, i),
    }


def _checker(acks: Iterable[Ack]) -> dict[str, Any]:
    verdict = check(a.record for a in acks)
    return {
        "ok": verdict.ok,
        "summary": verdict.summary(),
        "duplicate_ids": verdict.duplicate_ids,
        "overlapping_pairs": len(verdict.overlaps),
        "bad_sizes": len(verdict.bad_sizes),
        "out_of_bounds": len(verdict.out_of_bounds),
    }


def _source_mix(t: _Timeline) -> dict[str, dict[str, int]]:
    """Per second of the run: acknowledgements by source, and failures."""
    buckets: dict[int, Counter[str]] = defaultdict(Counter)
    for ack in t.acks:
        buckets[int(ack.acked_at - t.started)][ack.record.source or "?"] += 1
    for failure in t.failures:
        buckets[int(failure.failed_at - t.started)]["failed"] += 1
    return {str(k): dict(v) for k, v in sorted(buckets.items())}


def build_report(
    acks: Sequence[Ack],
    failures: Sequence[Failure],
    windows: Sequence[FaultWindow],
    *,
    started: float,
    ended: float,
    instances_health: Sequence[HealthSnapshot | None] = (),
    attempts: Sequence[tuple[float, str]] = (),
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole report as a JSON-able dict (see the module docstring)."""
    t = _Timeline(acks, failures, windows, started, ended)
    failed_in, failed_outside = t.by_window(t.failures, lambda f: (f.sent_at, f.failed_at))
    acked_in, _ = t.by_window(t.acks, lambda a: (a.sent_at, a.sent_at))
    tried_in, tried_outside = t.by_window(attempts, lambda a: (a[0], a[0]))
    rows = [
        _window_row(t, i, acked_in[i], failed_in[i], tried_in[i]) for i in range(len(t.windows))
    ]
    checker = _checker(t.acks)
    unexpected = len(failed_outside) + sum(
        len(f) for f, w in zip(failed_in, t.windows, strict=True) if not w.all_layers_down
    )
    elapsed = max(ended - started, 1e-9)
    return {
        "meta": meta or {},
        "duration_s": round(elapsed, 3),
        "acknowledged": len(t.acks),
        "acknowledged_ids": sum(a.record.size for a in t.acks),
        "throughput_per_s": round(len(t.acks) / elapsed, 1),
        "sources": _sources(t.acks),
        "checker": checker,
        "failed": len(t.failures),
        "failures_by_cause": _causes(t.failures),
        "failures_outside_windows": len(failed_outside),
        "failures_outside_by_cause": _causes(failed_outside),
        "unexpected_failures": unexpected,
        "retried_attempts": dict(Counter(cause for _, cause in attempts)),
        "retried_attempts_outside_windows": dict(Counter(c for _, c in tried_outside)),
        "latency_ms": percentiles([a.latency for a in t.acks]),
        "faults": rows,
        "faults_by_kind": dict(Counter(w.kind for w in t.windows)),
        "recovery_by_kind": _by_kind(rows),
        "faults_failed": sum(1 for w in t.windows if w.error),
        "source_mix_per_second": _source_mix(t),
        "ids_wasted": _ids_wasted(instances_health),
        "passed": checker["ok"] and unexpected == 0,
    }


def _by_kind(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per fault kind: how many, failures, and the median and worst recovery times."""
    kinds: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        kinds[row["kind"]].append(row)

    def spread(values: list[float | None]) -> dict[str, float | None]:
        known = sorted(v for v in values if v is not None)
        return {
            "median": known[(len(known) - 1) // 2] if known else None,
            "max": known[-1] if known else None,
            "never": len(values) - len(known),
        }

    return {
        kind: {
            "faults": len(group),
            "failed": sum(r["failed"] for r in group),
            "to_full_service_s": spread([r["to_full_service_s"] for r in group]),
            "to_primary_s": spread([r["to_primary_s"] for r in group]),
        }
        for kind, group in sorted(kinds.items())
    }


def _ids_wasted(healths: Sequence[HealthSnapshot | None]) -> dict[str, Any]:
    """Lease tails the Redis layer abandoned and reserve IDs retired, per the instances still
    answering at the end (a killed instance's counters died with it)."""
    redis = reserve = 0
    answered = 0
    for health in healths:
        if health is None:
            continue
        answered += 1
        redis += health.redis.ids_wasted if health.redis is not None else 0
        reserve += health.metrics.reserve_ids_wasted or 0
    return {
        "redis_lease_tails": redis,
        "reserve": reserve,
        "total": redis + reserve,
        "instances_reporting": answered,
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f}"


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown (the JSON has everything, this is for people)."""
    lat = report["latency_ms"]
    meta = report["meta"]
    verdict = (
        "INTERRUPTED" if meta.get("interrupted") else "PASSED" if report["passed"] else "FAILED"
    )
    lines = [
        f"# Chaos run: {verdict}",
        "",
        f"- command: `{meta.get('command', 'keygen chaos')}`",
        f"- seed {meta.get('seed')}, {meta.get('instances')} instances, target rate "
        f"{meta.get('rate')} req/s, {report['duration_s']:.0f} s of load",
        f"- acknowledged allocations: **{report['acknowledged']:,}** "
        f"({report['acknowledged_ids']:,} IDs, {report['throughput_per_s']:,} per s)",
        f"- checker: **{report['checker']['summary']}**",
        f"- failed requests: {report['failed']:,} (unexpected, outside all-layers-down "
        f"windows: **{report['unexpected_failures']:,}**)",
        f"- requests sent: {meta.get('sent', 0):,}; {meta.get('shed', 0):,} more not sent "
        "(counted as failed) because too many were in flight",
        f"- attempts that failed and were retried by the client: "
        f"{sum(report['retried_attempts'].values()):,} ("
        + ", ".join(f"{k} {v:,}" for k, v in sorted(report["retried_attempts"].items()))
        + ")",
        "- sources: " + ", ".join(f"{k} {v:,}" for k, v in sorted(report["sources"].items())),
        f"- latency ms: p50 {_ms(lat['p50'])}, p90 {_ms(lat['p90'])}, p99 {_ms(lat['p99'])}, "
        f"p99.9 {_ms(lat['p99.9'])}, max {_ms(lat['max'])}",
        f"- faults: {sum(report['faults_by_kind'].values())} ("
        + ", ".join(f"{k} {v}" for k, v in sorted(report["faults_by_kind"].items()))
        + f"), {report['faults_failed']} could not be applied",
        f"- IDs wasted (instances reporting: {report['ids_wasted']['instances_reporting']}): "
        f"Redis lease tails {report['ids_wasted']['redis_lease_tails']:,}, reserve "
        f"{report['ids_wasted']['reserve']:,}",
        "",
        "## Fault windows",
        "",
        "| fault | at s | lasted s | acked | failed | retried | p50 ms | p99 ms | max ms "
        "| to full service s | to primary s | sources |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in report["faults"]:
        wl = row["latency_ms"]
        flag = " (all layers down)" if row["all_layers_down"] else ""
        error = f" **error: {row['error'][:80]}**" if row["error"] else ""
        lines.append(
            f"| {row['label']}{flag}{error} | {row['start_s']:.1f} | {row['duration_s']:.1f} "
            f"| {row['acknowledged']:,} | {row['failed']:,} "
            f"| {sum(row['retried_attempts'].values()):,} | {_ms(wl['p50'])} "
            f"| {_ms(wl['p99'])} | {_ms(wl['max'])} | {_s(row['to_full_service_s'])} "
            f"| {_s(row['to_primary_s'])} | "
            + ", ".join(f"{k} {v}" for k, v in sorted(row["sources"].items()))
            + " |"
        )
    lines += [
        "",
        "## Recovery by fault kind",
        "",
        "| kind | faults | failed | to full service s (median / max) "
        "| to primary s (median / max / never) |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind, row in report["recovery_by_kind"].items():
        full, primary = row["to_full_service_s"], row["to_primary_s"]
        lines.append(
            f"| {kind} | {row['faults']} | {row['failed']:,} | {_s(full['median'])} / "
            f"{_s(full['max'])} | {_s(primary['median'])} / {_s(primary['max'])} / "
            f"{primary['never']} |"
        )
    lines += [
        "",
        "## Failed requests by cause",
        "",
        "| cause | all | outside windows |",
        "|---|---:|---:|",
    ]
    for cause, count in sorted(report["failures_by_cause"].items()):
        lines.append(
            f"| {cause} | {count:,} | {report['failures_outside_by_cause'].get(cause, 0):,} |"
        )
    if not report["failures_by_cause"]:
        lines.append("| (none) | 0 | 0 |")
    lines += [
        "",
        "## Source mix per second",
        "",
        "One character per second: `R` only redis_sentinel, `P` some postgresql, "
        "`E` some emergency_reserve, `x` some failures, `.` nothing acknowledged.",
        "",
        "```",
        _timeline(report),
        "```",
        "",
    ]
    return "\n".join(lines)


#: A second's character in the timeline: that of the first of these it saw.
_MIX_CHARS = (("failed", "x"), ("emergency_reserve", "E"), ("postgresql", "P"), (SOURCE_REDIS, "R"))


def _timeline(report: dict[str, Any]) -> str:
    mix = report["source_mix_per_second"]
    chars = [
        next((char for key, char in _MIX_CHARS if mix.get(str(second), {}).get(key)), ".")
        for second in range(int(report["duration_s"]) + 1)
    ]
    return "\n".join("".join(chars[i : i + 60]) for i in range(0, len(chars), 60))
