"""Rendering: the screen of ``keygen monitor`` as rich renderables, a panel per instance,
and the sparklines of its trends.

rich is imported when the screen is drawn, not with this module.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.table import Table
    from rich.text import Text

    from keygen.monitor.fetch import Instance
    from keygen.snapshots import HealthSnapshot, MetricsSnapshot

SPARK_BLOCKS: Final = "▁▂▃▄▅▆▇█"
_STYLES: Final = {
    "healthy": "green",
    "degraded": "yellow",
    "unhealthy": "red",
    "not_configured": "dim",
    "closed": "green",
    "half_open": "yellow",
    "open": "red",
}


def sparkline(values: Sequence[float | None], width: int) -> str:
    """``values`` in at most ``width`` block characters, each the mean of its share of them (a
    blank where a share holds only ``None``), from 0 (or the least, if below) to the most."""
    if width <= 0 or not values:
        return ""
    n = len(values)
    buckets: list[float | None] = list(values)
    if n > width:
        buckets = []
        for i in range(width):
            share = [v for v in values[i * n // width : (i + 1) * n // width] if v is not None]
            buckets.append(sum(share) / len(share) if share else None)
    present = [v for v in buckets if v is not None]
    if not present:
        return " " * len(buckets)
    low, high = min(0.0, *present), max(present)
    top = len(SPARK_BLOCKS) - 1
    return "".join(
        " "
        if v is None
        else SPARK_BLOCKS[round((v - low) / (high - low) * top) if high > low else 0]
        for v in buckets
    )


def _ago(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    seconds = max(0.0, time.time() - timestamp)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    return f"{seconds / 60:.0f} min ago" if seconds < 7200 else f"{seconds / 3600:.1f} h ago"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _figure(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}{unit}" if abs(value) >= 100 else f"{value:.3g}{unit}"


def _column(instance: Instance, name: str) -> list[float | None] | None:
    return instance.history.series.get(name) if instance.history is not None else None


def _spark(instance: Instance, values: Sequence[float | None], width: int) -> Text:
    """A sparkline of the whole window: blank where it goes back beyond the instance's history
    (a young instance, or one whose history was lost)."""
    from rich.text import Text

    if instance.history is not None and instance.history.step_seconds > 0:
        points = int(instance.history.window_seconds // instance.history.step_seconds)
        values = [None] * (points - len(values)) + list(values)
    return Text(sparkline(values, width), style="cyan")


def _latest(values: Sequence[float | None] | None) -> float | None:
    return next((v for v in reversed(values or ()) if v is not None), None)


def _recent_rate(values: Sequence[float | None] | None, points: int = 10) -> float | None:
    """The mean of the last ``points`` of a rate (a second with no request counts 0)."""
    if not values:
        return None
    recent = values[-points:]
    return sum(v or 0.0 for v in recent) / len(recent)


def _styled(word: str) -> Text:
    from rich.text import Text

    return Text(word, style=_STYLES.get(word, "bold red"))


def _layers(instance: Instance, health: HealthSnapshot, width: int) -> Table:
    from rich.table import Table

    table = Table(box=None, padding=(0, 1), pad_edge=False)
    table.add_column("layer")
    table.add_column("health")
    table.add_column("breaker")
    table.add_column("ping", justify="right")
    if instance.history is not None:
        table.add_column(f"up, last {_window_words(instance)}", no_wrap=True)
    table.add_column("error", overflow="fold")
    for layer in health.layers:
        up = _column(instance, f"layer_up_{layer.source}") or ()
        cells: list[str | Text] = [_styled(layer.health), _styled(layer.breaker)]
        cells.append(_figure(layer.latency_ms, " ms"))
        if instance.history is not None:
            cells.append(_spark(instance, up, width // 3))
        table.add_row(layer.source, *cells, layer.error or "")
    return table


def _window_words(instance: Instance) -> str:
    if instance.history is None:
        return "-"
    return _duration(instance.history.window_seconds)


def _figures(instance: Instance, health: HealthSnapshot) -> Table:
    from rich.table import Table

    metrics = health.metrics
    rate = _recent_rate(_column(instance, "requests_per_second"))
    by_source = ", ".join(
        f"{layer.source} {_figure(_recent_rate(_column(instance, f'rate_{layer.source}')))}"
        for layer in health.layers
        if _column(instance, f"rate_{layer.source}") and len(health.layers) > 1
    )
    if rate is None:  # no history: the change between the last two answers
        rate = instance.polled_rate
    percentiles = [_latest(_column(instance, f"latency_p{p}_ms")) for p in (50, 95, 99)]
    latency = (
        f"p50 {_figure(percentiles[0])} · p95 {_figure(percentiles[1])} · "
        f"p99 {_figure(percentiles[2])} ms"
        if instance.history is not None
        else f"avg {_figure(metrics.avg_allocation_time_ms)} · "
        f"p95 {_figure(metrics.p95_allocation_time_ms)} ms"
    )
    grid = Table.grid(padding=(0, 2))
    for _ in range(2):
        grid.add_column(style="bold")
        grid.add_column()
    grid.add_row("allocations", f"{metrics.total_allocations:,}", "failed", _failed(metrics))
    grid.add_row(
        "IDs allocated", f"{metrics.ids_allocated:,}", "active locks", f"{health.active_locks:,}"
    )
    grid.add_row(
        "rate, 10 s",
        _figure(rate, "/s") + (f" ({by_source})" if by_source else ""),
        "latency",
        latency,
    )
    for key, value, key2, value2 in _layer_rows(health):
        grid.add_row(key, value, key2, value2)
    return grid


def _failed(metrics: MetricsSnapshot) -> Text:
    from rich.text import Text

    failed = metrics.failed_allocations
    return Text(f"{failed:,}", style="red" if failed else "")


def _layer_rows(health: HealthSnapshot) -> list[tuple[str, str | Text, str, str | Text]]:
    """The Redis master and failovers, the PostgreSQL pool, the reserve: where configured."""
    from rich.text import Text

    rows: list[tuple[str, str | Text, str, str | Text]] = []
    if health.redis is not None:
        redis = health.redis
        quorum = Text("quorum ok", "green") if redis.sentinel_quorum else Text("NO QUORUM", "red")
        master = Text.assemble(redis.master or Text("unknown", "red"), " (", quorum, ")")
        failovers = f"{redis.failovers:,} (last {_ago(redis.last_failover_at)})"
        rows.append(("redis master", master, "failovers", failovers))
    if health.postgresql is not None:
        pg = health.postgresql
        state = Text("connected", "green") if pg.connected else Text("DISCONNECTED", "red")
        pool = f"{pg.pool_size - pg.pool_idle}/{pg.pool_size} busy (max {pg.pool_max_size})"
        rows.append(("postgresql", Text.assemble(state, f" {pg.url}"), "pool", pool))
        if pg.last_error:
            rows.append(
                ("", "", "last error", Text(f"{pg.last_error} ({_ago(pg.last_error_at)})", "red"))
            )
    if health.reserve is not None:
        reserve = health.reserve
        serving = (
            Text("SERVING", "bold yellow") if reserve.serving else Text("standing by", "green")
        )
        left = ", ".join(
            f"{name} {ns.remaining or 0:,} left"
            + (f" ({_duration(ns.minutes_left * 60)})" if ns.minutes_left is not None else "")
            for name, ns in list(reserve.namespaces.items())[:3]
        )
        rows.append(("reserve", serving, "remaining", left or "none held"))
        problem = reserve.journal_error or reserve.last_error
        if problem:
            rows.append(("", "", "reserve error", Text(problem, "red")))
    return rows


def _alerts(instance: Instance) -> RenderableType:
    from rich.table import Table
    from rich.text import Text

    if instance.alerts is None:
        return Text(f"alerts: unavailable ({instance.alerts_note})", style="dim")
    firing = [a for a in instance.alerts.alerts if a.state == "firing"]
    pending = sum(a.state == "pending" for a in instance.alerts.alerts)
    tail = f" · {pending} pending" if pending else ""
    if not firing:
        return Text(f"alerts: none firing{tail}", style="green")
    table = Table(box=None, padding=(0, 1), pad_edge=False, title_justify="left")
    table.title = Text(f"alerts: {len(firing)} firing{tail}", style="bold red")
    for column in ("severity", "alert", "labels", "since", "summary"):
        table.add_column(column, overflow="fold" if column == "summary" else "ellipsis")
    for alert in firing:
        table.add_row(
            Text(alert.severity, style="red" if alert.severity == "critical" else "yellow"),
            alert.name,
            ",".join(f"{k}={v}" for k, v in alert.labels.items()),
            _ago(alert.since),
            alert.summary,
        )
    return table


_TRENDS: Final = (
    ("requests_per_second", "allocations/s", ""),
    ("error_rate", "error rate", "%"),
    ("latency_p50_ms", "p50 ms", ""),
    ("latency_p95_ms", "p95 ms", ""),
    ("latency_p99_ms", "p99 ms", ""),
    ("active_locks", "active locks", ""),
    ("reserve_remaining_ids", "reserve IDs", ""),
    ("redis_failovers", "failovers", ""),
)
#: Shown even when empty: the rest only when the instance has something to say in them.
_ALWAYS: Final = frozenset({"requests_per_second", "latency_p95_ms"})


def _trends(instance: Instance, width: int) -> RenderableType:
    from rich.table import Table
    from rich.text import Text

    if instance.history is None:
        return Text(f"trends: unavailable ({instance.history_note})", style="dim")
    table = Table(box=None, padding=(0, 1), pad_edge=False, title_justify="left")
    table.title = Text(f"trends, last {_window_words(instance)}", style="bold")
    for column in ("", "", "now", "max"):
        table.add_column(column, justify="left" if not column else "right")
    for name, label, unit in _TRENDS:
        values = _column(instance, name)
        if values is None or (name not in _ALWAYS and all(v is None for v in values)):
            continue
        scale = 100.0 if unit == "%" else 1.0  # error_rate is a fraction
        present = [v * scale for v in values if v is not None]
        table.add_row(
            label,
            _spark(instance, values, width),
            _figure(present[-1] if present else None, unit),
            _figure(max(present) if present else None, unit),
        )
    return table


def _panel(instance: Instance, width: int) -> RenderableType:
    from rich.console import Group
    from rich.panel import Panel
    from rich.text import Text

    health = instance.health
    if health is None:
        body = Text.assemble(("unreachable", "bold red"), f": {instance.error or 'not read yet'}")
        if instance.answered_at is not None:
            body.append(f" (last answer {_ago(instance.answered_at)})", style="dim")
        return Panel(body, title=instance.url, title_align="left", border_style="red")
    spark = max(10, min(60, width - 40))
    summary = Text.assemble(
        _styled(health.status),
        f"  {health.instance_id} · v{health.version} · ledger {health.ledger} · "
        f"{health.workers} worker{'s' if health.workers != 1 else ''} · "
        f"up {_duration(health.uptime_seconds)}",
    )
    return Panel(
        Group(
            summary,
            _layers(instance, health, spark),
            _figures(instance, health),
            _alerts(instance),
            _trends(instance, spark),
        ),
        title=instance.url,
        title_align="left",
        subtitle=f"answered in {_figure(instance.answered_ms, ' ms')}",
        subtitle_align="right",
        border_style=_STYLES.get(health.status, "red"),
    )


def render(instances: Sequence[Instance], width: int, footer: str = "") -> RenderableType:
    """The screen: a line of totals, then a panel per instance."""
    from rich.console import Group
    from rich.text import Text

    counts: dict[str, int] = {}
    for instance in instances:
        counts[instance.state] = counts.get(instance.state, 0) + 1
    states = ", ".join(f"{n} {state}" for state, n in counts.items())
    plural = "s" if len(instances) != 1 else ""
    header = Text.assemble(
        ("Keygen monitor", "bold"),
        f" · {time.strftime('%H:%M:%S')} · {len(instances)} instance{plural}: {states}",
        (footer, "dim"),
    )
    return Group(header, *(_panel(i, width) for i in instances))
