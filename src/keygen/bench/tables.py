"""The two tables of the original product description ("Performance Benchmarks"), as
Markdown, with the figures measured here next to the original's.

The original's figures come with no method (no generator, machine, or definition of a
"failover time"); they are printed beside ours, not compared by any rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from keygen.bench.stats import StepResult, saturated

if TYPE_CHECKING:
    from keygen.bench.failover import ScenarioResult

__all__ = [
    "ORIGINAL_ALLOCATION",
    "ORIGINAL_FAILOVER",
    "allocation_table",
    "failover_table",
    "ms",
    "percent",
]

ORIGINAL = "original description"
#: Load (req/s) -> RPS, Avg, P95, Success, as the original's table gives them.
ORIGINAL_ALLOCATION: dict[float, tuple[str, str, str, str]] = {
    100: ("100", "2.1 ms", "4.2 ms", "100%"),
    500: ("500", "2.3 ms", "5.1 ms", "100%"),
    1000: ("1,000", "2.8 ms", "6.7 ms", "99.9%"),
    2000: ("2,000", "3.5 ms", "8.9 ms", "99.8%"),
}
#: Scenario key -> detection, failover, service impact, as the original's table gives them.
ORIGINAL_FAILOVER: dict[str, tuple[str, str, str]] = {
    "master": ("5s", "10s", "< 1s interruption"),
    "partition": ("3s", "15s", "Automatic recovery"),
    "sentinel": ("N/A", "N/A", "No impact (quorum)"),
}


def ms(seconds: float) -> str:
    """A latency, to about three significant digits."""
    value = seconds * 1e3
    if value < 10:
        return f"{value:.2f} ms"
    if value < 100:
        return f"{value:.1f} ms"
    return f"{value:,.0f} ms"


def percent(ok: int, total: int) -> str:
    """A success rate that never rounds a failure away: 99.99 %, not 100 %, for 1 in 20,000."""
    if total == 0:
        return "-"
    if ok == total:
        return "100%"
    return f"{min(99.99, ok / total * 100):.2f}%"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numbers: int = 2) -> str:
    """A Markdown table, the columns from ``numbers`` on aligned right."""
    align = ["---:" if i >= numbers else "---" for i in range(len(header))]
    return "\n".join([_row(header), _row(align), *(_row(r) for r in rows)]) + "\n"


def allocation_table(results: Sequence[StepResult], targets: Sequence[str]) -> str:
    """Per offered rate, one row per target (in ``targets``' order), then the original's."""
    rates = sorted({r.offered for r in results})
    rows: list[list[str]] = []
    for rate in rates:
        first = True
        for name in targets:
            for result in (r for r in results if r.offered == rate and r.target == name):
                rows.append(
                    [
                        f"{rate:,.0f} req/s" if first else "",
                        name,
                        f"{result.rps:,.0f}",
                        ms(result.latency.mean),
                        ms(result.latency.percentile(0.50)),
                        ms(result.latency.percentile(0.95)),
                        ms(result.latency.percentile(0.99)),
                        percent(result.ok, result.scheduled),
                        "saturated" if saturated(result) else "",
                    ]
                )
                first = False
        if rate in ORIGINAL_ALLOCATION:
            rps, avg, p95, success = ORIGINAL_ALLOCATION[rate]
            load = f"{rate:,.0f} req/s" if first else ""
            rows.append([load, ORIGINAL, rps, avg, "-", p95, "-", success, ""])
    header = ["Load", "Target", "RPS", "Avg", "p50", "p95", "p99", "Success", "Note"]
    return _table(header, rows, numbers=2)


def _seconds(value: float | None, missing: str = "-") -> str:
    return missing if value is None else f"{value:.1f} s"


def failover_table(results: Sequence[ScenarioResult]) -> str:
    """One row per scenario, the original's figures in the last columns."""
    rows = []
    for r in results:
        original = ORIGINAL_FAILOVER.get(r.original, ("", "", ""))
        if r.error is not None:
            rows.append([r.name, f"not measured: {r.error}", "", "", *original])
            continue
        detection = [
            f"Sentinel +sdown {_seconds(r.sdown)}" if r.sdown is not None else "Sentinels: none",
            f"/health {_seconds(r.health_down)}" if r.health_down is not None else "/health: ok",
        ]
        if r.promoted is not None:
            failover = f"promoted {_seconds(r.promoted)}"
        else:
            failover = "no failover"
        if r.back is not None:
            failover += f"; on redis_sentinel again {_seconds(r.back)}"
        elif r.left is not None:
            failover += "; not back on redis_sentinel"
        else:
            failover += "; served from redis_sentinel throughout"
        served = ", ".join(f"{source} {n:,}" for source, n in r.sources.most_common())
        impact = (
            f"longest gap {r.longest_gap:.2f} s; {r.failed:,} of {r.requests:,} failed; {served}"
        )
        rows.append([r.name, "; ".join(detection), failover, impact, *original])
    header = ["Scenario", "Detection", "Failover", "Service impact"]
    header += ["Original: detection", "failover", "impact"]
    return _table(header, rows, numbers=len(header))
