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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keygen.checker import Record, check
from keygen.constants import SOURCE_REDIS

__all__ = ["Ack", "Failure", "build_report", "markdown", "percentiles", "read_jsonl"]

OUTSIDE = "outside"
#: How long after a window closes its effects still count as its own.
AFTERMATH = 30.0
PERCENTILES = (50, 90, 99, 99.9)


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
    return [Ack(Record.from_json(d), float(d["sent_at"]), float(d["acked_at"]))
            for d in read_jsonl(path)]


def read_failures(path: Path) -> list[Failure]:
    return [Failure(float(d["sent_at"]), float(d["failed_at"]), str(d["cause"]))
            for d in read_jsonl(path)]


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


def _window_label(index: int, window: dict[str, Any]) -> str:
    return f"#{index + 1} {window['kind']}"


def _window_of(starts: list[float], windows: Sequence[dict[str, Any]], sent: float,
               done: float) -> int | None:
    """The window the request [sent, done] overlapped (the latest that opened before done)."""
    i = bisect.bisect_right(starts, done) - 1
    while i >= 0:
        end = windows[i]["end"] or math.inf
        if sent <= end and done >= windows[i]["start"]:
            return i
        if end < sent:
            return None
        i -= 1
    return None


def _recovery(window: dict[str, Any], limit: float, acks: Sequence[Ack], acked_at: list[float],
              failures: Sequence[Failure]) -> dict[str, float | None]:
    start, end = window["start"], window["end"] or window["start"]
    horizon = min(limit, end + AFTERMATH)

    def after(moment: float) -> Iterable[Ack]:  # acks acknowledged at or after moment
        return (acks[i] for i in range(bisect.bisect_left(acked_at, moment), len(acks)))

    failed = [f.failed_at for f in failures if start <= f.failed_at and f.sent_at <= horizon]
    last_failure = max(failed, default=start)
    full = next((a.acked_at for a in after(last_failure) if a.sent_at >= last_failure), None)
    # A request sent by the horizon is acknowledged within its timeouts: a minute at most.
    window_acks = itertools.takewhile(lambda a: a.acked_at <= horizon + 60, after(start))
    # What was served elsewhere (or failed) from the fault's start until the next fault began,
    # sent by the horizon: a request sent just before a fault and caught by it counts for that
    # fault's window, not for the previous one.
    elsewhere = [a.sent_at for a in window_acks if start <= a.acked_at < limit
                 and a.sent_at <= horizon and a.record.source != SOURCE_REDIS]
    elsewhere += [f.sent_at for f in failures
                  if start <= f.failed_at < limit and f.sent_at <= horizon]
    left_primary = max(elsewhere, default=None)
    primary = None
    if left_primary is not None:
        since = max(left_primary, start)
        primary = next((a.acked_at for a in after(since)
                        if a.sent_at > since and a.record.source == SOURCE_REDIS), None)
    return {
        "to_full_service_s": None if full is None else round(full - start, 3),
        "to_primary_s": (0.0 if left_primary is None else
                         None if primary is None else round(primary - start, 3)),
        "left_primary": left_primary is not None,
    }


def build_report(acks: Sequence[Ack], failures: Sequence[Failure],
                 windows: Sequence[dict[str, Any]], *, started: float, ended: float,
                 instances_health: Sequence[dict[str, Any] | None] = (),
                 attempts: Sequence[tuple[float, str]] = (),
                 meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole report as a JSON-able dict (see the module docstring)."""
    acks = sorted(acks, key=lambda a: a.acked_at)
    failures = sorted(failures, key=lambda f: f.failed_at)
    windows = sorted(windows, key=lambda w: w["start"])
    starts = [w["start"] for w in windows]
    acked_at = [a.acked_at for a in acks]
    verdict = check(a.record for a in acks)

    failures_by_window: list[list[Failure]] = [[] for _ in windows]
    outside: list[Failure] = []
    for failure in failures:
        i = _window_of(starts, windows, failure.sent_at, failure.failed_at)
        (outside if i is None else failures_by_window[i]).append(failure)
    acks_by_window: list[list[Ack]] = [[] for _ in windows]
    for ack in acks:
        i = _window_of(starts, windows, ack.sent_at, ack.sent_at)
        if i is not None:
            acks_by_window[i].append(ack)
    attempts_by_window: list[Counter[str]] = [Counter() for _ in windows]
    attempts_outside: Counter[str] = Counter()
    for at, cause in attempts:
        i = _window_of(starts, windows, at, at)
        (attempts_outside if i is None else attempts_by_window[i])[cause] += 1
    unexpected = len(outside) + sum(
        len(f) for f, w in zip(failures_by_window, windows, strict=True)
        if not w.get("all_layers_down")
    )

    window_rows = []
    for i, window in enumerate(windows):
        limit = windows[i + 1]["start"] if i + 1 < len(windows) else ended
        in_window = acks_by_window[i]
        window_rows.append({
            "label": _window_label(i, window), "kind": window["kind"],
            "start_s": round(window["start"] - started, 3),
            "duration_s": round((window["end"] or ended) - window["start"], 3),
            "all_layers_down": bool(window.get("all_layers_down")),
            "detail": window.get("detail", ""), "error": window.get("error"),
            "acknowledged": len(in_window),
            "sources": dict(Counter(a.record.source or "?" for a in in_window)),
            "failed": len(failures_by_window[i]),
            "failures_by_cause": dict(Counter(f.cause for f in failures_by_window[i])),
            "latency_ms": percentiles([a.latency for a in in_window]),
            "retried_attempts": dict(attempts_by_window[i]),
            **_recovery(window, limit, acks, acked_at, failures),
        })

    buckets: dict[int, Counter[str]] = defaultdict(Counter)
    for ack in acks:
        buckets[int(ack.acked_at - started)][ack.record.source or "?"] += 1
    for failure in failures:
        buckets[int(failure.failed_at - started)]["failed"] += 1
    wasted = _ids_wasted(instances_health)
    elapsed = max(ended - started, 1e-9)
    return {
        "meta": meta or {},
        "duration_s": round(elapsed, 3),
        "acknowledged": len(acks),
        "acknowledged_ids": sum(a.record.size for a in acks),
        "throughput_per_s": round(len(acks) / elapsed, 1),
        "sources": dict(Counter(a.record.source or "?" for a in acks)),
        "checker": {
            "ok": verdict.ok, "summary": verdict.summary(),
            "duplicate_ids": verdict.duplicate_ids, "overlapping_pairs": len(verdict.overlaps),
            "bad_sizes": len(verdict.bad_sizes), "out_of_bounds": len(verdict.out_of_bounds),
        },
        "failed": len(failures),
        "failures_by_cause": dict(Counter(f.cause for f in failures)),
        "failures_outside_windows": len(outside),
        "failures_outside_by_cause": dict(Counter(f.cause for f in outside)),
        "unexpected_failures": unexpected,
        "retried_attempts": dict(Counter(cause for _, cause in attempts)),
        "retried_attempts_outside_windows": dict(attempts_outside),
        "latency_ms": percentiles([a.latency for a in acks]),
        "faults": window_rows,
        "faults_by_kind": dict(Counter(w["kind"] for w in windows)),
        "recovery_by_kind": _by_kind(window_rows),
        "faults_failed": sum(1 for w in windows if w.get("error")),
        "source_mix_per_second": {str(k): dict(v) for k, v in sorted(buckets.items())},
        "ids_wasted": wasted,
        "passed": verdict.ok and unexpected == 0,
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


def _ids_wasted(healths: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """Lease tails the Redis layer abandoned and reserve IDs retired, per the instances still
    answering at the end (a killed instance's counters died with it)."""
    redis = reserve = 0
    answered = 0
    for health in healths:
        if not health:
            continue
        answered += 1
        redis += int((health.get("redis") or {}).get("ids_wasted", 0))
        reserve += int((health.get("metrics") or {}).get("reserve_ids_wasted", 0))
    return {"redis_lease_tails": redis, "reserve": reserve, "total": redis + reserve,
            "instances_reporting": answered}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f}"


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown (the JSON has everything, this is for people)."""
    lat = report["latency_ms"]
    meta = report["meta"]
    verdict = ("INTERRUPTED" if meta.get("interrupted")
               else "PASSED" if report["passed"] else "FAILED")
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
            + ", ".join(f"{k} {v}" for k, v in sorted(row["sources"].items())) + " |"
        )
    lines += ["", "## Recovery by fault kind", "",
              "| kind | faults | failed | to full service s (median / max) "
              "| to primary s (median / max / never) |", "|---|---:|---:|---:|---:|"]
    for kind, row in report["recovery_by_kind"].items():
        full, primary = row["to_full_service_s"], row["to_primary_s"]
        lines.append(
            f"| {kind} | {row['faults']} | {row['failed']:,} | {_s(full['median'])} / "
            f"{_s(full['max'])} | {_s(primary['median'])} / {_s(primary['max'])} / "
            f"{primary['never']} |"
        )
    lines += ["", "## Failed requests by cause", "", "| cause | all | outside windows |",
              "|---|---:|---:|"]
    for cause, count in sorted(report["failures_by_cause"].items()):
        lines.append(f"| {cause} | {count:,} | "
                     f"{report['failures_outside_by_cause'].get(cause, 0):,} |")
    if not report["failures_by_cause"]:
        lines.append("| (none) | 0 | 0 |")
    lines += ["", "## Source mix per second", "",
              "One character per second: `R` only redis_sentinel, `P` some postgresql, "
              "`E` some emergency_reserve, `x` some failures, `.` nothing acknowledged.", "",
              "```", _timeline(report), "```", ""]
    return "\n".join(lines)


def _timeline(report: dict[str, Any]) -> str:
    mix = report["source_mix_per_second"]
    seconds = int(report["duration_s"]) + 1
    chars = []
    for second in range(seconds):
        bucket = mix.get(str(second), {})
        if bucket.get("failed"):
            chars.append("x")
        elif bucket.get("emergency_reserve"):
            chars.append("E")
        elif bucket.get("postgresql"):
            chars.append("P")
        elif bucket.get(SOURCE_REDIS):
            chars.append("R")
        else:
            chars.append(".")
    return "\n".join("".join(chars[i:i + 60]) for i in range(0, len(chars), 60))
