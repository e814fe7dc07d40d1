"""``keygen monitor`` (and ``scripts/monitor-id-service.py``): a terminal dashboard of one or
several instances.

Every ``--interval`` seconds each instance is read, on its own, from ``GET /health`` (a
``HealthSnapshot``), ``GET /metrics/history`` and ``GET /alerts`` (docs/monitoring.md): one that
is down or hangs shows as unreachable, with the error, while the others go on. An instance
without history or alerts (an older version) shows what it has and says what it lacks.
``--once`` prints one snapshot and exits with the worst instance's verdict, for scripts.

Only the standard library is imported with the parser; rich, httpx and msgspec when the
command runs, so that ``keygen serve`` does not pay for them.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeVar
from urllib.parse import urlsplit

from keygen.constants import DEFAULT_HOST, DEFAULT_PORT

if TYPE_CHECKING:
    import httpx
    from rich.console import Console, RenderableType
    from rich.table import Table
    from rich.text import Text

    from keygen.snapshots import (
        AlertsDocument,
        HealthSnapshot,
        HistoryDocument,
        MetricsSnapshot,
    )

__all__ = [
    "DEFAULT_INTERVAL",
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "DEFAULT_WINDOW",
    "EXIT_DEGRADED",
    "EXIT_DOWN",
    "EXIT_HEALTHY",
    "Instance",
    "Options",
    "add_monitor_command",
    "main",
    "monitor",
    "refresh",
    "render",
    "sparkline",
    "verdict",
]

DEFAULT_URL: Final = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
DEFAULT_INTERVAL: Final = 1.0
#: Per request: a monitor must not wait on one instance while the others go stale.
DEFAULT_TIMEOUT: Final = 2.0
DEFAULT_WINDOW: Final = "5m"

# The exit status of --once (and --frames): the worst instance's.
EXIT_HEALTHY: Final = 0
EXIT_DEGRADED: Final = 1
EXIT_DOWN: Final = 2  # unreachable or unhealthy

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
_WINDOW: Final = re.compile(r"^[1-9][0-9]*[smh]?$")  # seconds, or with a unit
_T = TypeVar("_T")


@dataclass
class Instance:
    """What the monitor last learnt of one instance."""

    url: str
    health: HealthSnapshot | None = None
    #: Why there is no health snapshot: the instance is unreachable.
    error: str | None = None
    history: HistoryDocument | None = None
    history_note: str | None = None  # why there is no history
    alerts: AlertsDocument | None = None
    alerts_note: str | None = None
    answered_ms: float | None = None
    answered_at: float | None = None  # the wall clock of the last health snapshot
    #: Allocations per second between the last two answers (shown when there is no history).
    polled_rate: float | None = None
    _last_total: tuple[float, int] | None = None

    @property
    def verdict(self) -> int:
        status = self.health.status if self.health is not None else None
        if status == "healthy":
            return EXIT_HEALTHY
        return EXIT_DEGRADED if status == "degraded" else EXIT_DOWN

    @property
    def state(self) -> str:
        """``healthy``, ``degraded``, ``unhealthy`` or ``unreachable``."""
        return self.health.status if self.health is not None else "unreachable"


@dataclass(frozen=True)
class Options:
    """What ``keygen monitor`` watches, and how (the command line's options)."""

    urls: tuple[str, ...] = (DEFAULT_URL,)
    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    window: str = DEFAULT_WINDOW
    once: bool = False
    frames: int | None = None  # stop after this many refreshes (None: until Ctrl-C)


def verdict(instances: Sequence[Instance]) -> int:
    """The exit status for these instances: the worst of theirs."""
    return max((i.verdict for i in instances), default=EXIT_HEALTHY)


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


# --- Reading the instances ---------------------------------------------------------------


async def _get(client: httpx.AsyncClient, url: str, timeout: float) -> httpx.Response:
    # httpx's timeout bounds each phase; this bounds the whole request (a trickling answer).
    async with asyncio.timeout(timeout):
        return await client.get(url)


def _why(outcome: BaseException, timeout: float) -> str:
    import httpx

    if isinstance(outcome, TimeoutError | httpx.TimeoutException):
        return f"no answer in {timeout:g} s"
    if isinstance(outcome, httpx.ConnectError):
        # httpx says "All connection attempts failed"; the OSError beneath says why.
        cause: BaseException | None = outcome
        while cause is not None and not (isinstance(cause, OSError) and cause.errno):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, OSError) and cause.errno:
            reason = os.strerror(cause.errno) if cause.errno > 0 else cause.strerror
            return f"cannot connect: {reason}"
        return f"cannot connect: {outcome}"
    if isinstance(outcome, httpx.HTTPError):
        return f"{type(outcome).__name__}: {outcome}"
    raise outcome  # not a network failure: a bug, to be seen


def _document(
    outcome: httpx.Response | BaseException,
    kind: type[_T],
    path: str,
    timeout: float,
    ok: tuple[int, ...] = (200,),
) -> _T | str:
    """The document ``path`` answered, decoded as ``kind``; or why there is none."""
    import msgspec

    if isinstance(outcome, BaseException):
        return _why(outcome, timeout)
    if outcome.status_code not in ok:
        reason = f"{path} answered HTTP {outcome.status_code}"
        try:
            error = msgspec.json.decode(outcome.content)["error"]
            return f"{reason}: {error['code']}: {error['message']}"
        except (msgspec.DecodeError, KeyError, TypeError):
            return f"{reason} {outcome.reason_phrase}".rstrip()
    try:
        return msgspec.json.decode(outcome.content, type=kind)
    except msgspec.DecodeError as exc:
        return f"{path} is not the document expected: {exc}"


async def refresh(client: httpx.AsyncClient, instance: Instance, options: Options) -> None:
    """Read ``instance``'s health, history and alerts; a failure is noted on it, never raised."""
    from keygen.snapshots import AlertsDocument, HealthSnapshot, HistoryDocument

    started = time.monotonic()
    health, history, alerts = await asyncio.gather(
        _get(client, f"{instance.url}/health", options.timeout),
        _get(client, f"{instance.url}/metrics/history?window={options.window}", options.timeout),
        _get(client, f"{instance.url}/alerts", options.timeout),
        return_exceptions=True,
    )
    now = time.monotonic()
    # /health answers 503 while the instance cannot allocate: its body says why.
    snapshot = _document(health, HealthSnapshot, "/health", options.timeout, ok=(200, 503))
    if isinstance(snapshot, str):
        instance.health, instance.error = None, snapshot
        instance.history, instance.alerts = None, None
        instance.history_note = instance.alerts_note = None
        instance.answered_ms = instance.polled_rate = instance._last_total = None
        return
    total = snapshot.metrics.total_allocations
    if instance._last_total is not None and now > instance._last_total[0]:
        last_time, last_total = instance._last_total
        instance.polled_rate = max(0, total - last_total) / (now - last_time)
    instance._last_total = (now, total)
    instance.health, instance.error = snapshot, None
    instance.answered_ms = (now - started) * 1000
    instance.answered_at = time.time()
    found = _document(history, HistoryDocument, "/metrics/history", options.timeout)
    instance.history, instance.history_note = (
        (None, found) if isinstance(found, str) else (found, None)
    )
    fired = _document(alerts, AlertsDocument, "/alerts", options.timeout)
    instance.alerts, instance.alerts_note = (
        (None, fired) if isinstance(fired, str) else (fired, None)
    )


# --- Rendering ---------------------------------------------------------------------------


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


# --- Running -----------------------------------------------------------------------------


async def _frames(
    client: httpx.AsyncClient,
    instances: Sequence[Instance],
    options: Options,
    show: Callable[[int], None],
) -> None:
    """Refresh the instances and ``show`` them, once an interval: an instance still reading
    when its interval is over keeps its figures until its request ends (or times out)."""
    loop = asyncio.get_running_loop()
    reading: dict[int, asyncio.Task[None]] = {}
    tick = loop.time()
    frame = 0
    try:
        while options.frames is None or frame < options.frames:
            for index, instance in enumerate(instances):
                if index not in reading or reading[index].done():
                    reading[index] = asyncio.create_task(refresh(client, instance, options))
            tick += options.interval
            await asyncio.wait(reading.values(), timeout=max(0.0, tick - loop.time()))
            for task in reading.values():
                if task.done():
                    task.result()  # a bug in refresh: raise it, do not hide it
            frame += 1
            show(frame)
            await asyncio.sleep(max(0.0, tick - loop.time()))
    finally:
        for task in reading.values():
            task.cancel()
        await asyncio.gather(*reading.values(), return_exceptions=True)


async def _run(options: Options, console: Console) -> int:
    import httpx
    from rich.live import Live

    instances = [Instance(url) for url in options.urls]
    async with httpx.AsyncClient(
        timeout=options.timeout, headers={"accept": "application/json"}
    ) as client:
        if options.once:
            await asyncio.gather(*(refresh(client, i, options) for i in instances))
            console.print(render(instances, console.width))
            return verdict(instances)
        if not console.is_terminal:  # a pipe or a file: one snapshot after another
            await _frames(
                client,
                instances,
                options,
                lambda _: console.print(render(instances, console.width)),
            )
            return verdict(instances)
        footer = f" · every {options.interval:g} s · Ctrl-C quits"
        with Live(console=console, screen=True, auto_refresh=False, redirect_stderr=False) as live:
            await _frames(
                client,
                instances,
                options,
                lambda _: live.update(render(instances, console.width, footer), refresh=True),
            )
    return verdict(instances)


def monitor(args: argparse.Namespace) -> int:
    """Run ``keygen monitor``: one snapshot with ``--once``, else the live screen until Ctrl-C
    (or ``--frames`` refreshes)."""
    from rich.console import Console

    options = Options(
        urls=tuple(dict.fromkeys(args.url or [DEFAULT_URL])),
        interval=args.interval,
        timeout=args.timeout,
        window=args.window,
        once=args.once,
        frames=args.frames,
    )
    try:
        return asyncio.run(_run(options, Console(highlight=False)))
    except KeyboardInterrupt:
        # Leaving the live screen is its normal end; a script's snapshot cut short is not.
        return 130 if options.once or options.frames else EXIT_HEALTHY


# --- The command line --------------------------------------------------------------------

DESCRIPTION: Final = (
    "A terminal dashboard of Keygen instances: per instance its status, layers and breakers, "
    "allocation rate, latency percentiles, the Redis master and failovers, the emergency "
    "reserve, firing alerts and trend sparklines, read from GET /health, /metrics/history and "
    "/alerts."
)
EPILOG: Final = (
    "exit status (with --once or --frames): 0 every instance healthy, 1 one degraded, "
    "2 one unreachable or unhealthy. Ctrl-C leaves the live screen with 0 (130 with --once or "
    "--frames)."
)


def instance_url(value: str) -> str:
    """``--url``: an instance's base URL; ``host:port`` stands for ``http://host:port``."""
    text = value.strip().rstrip("/")
    if "://" not in text:
        text = f"http://{text}"
    parts = urlsplit(text)
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        parts = parts._replace(netloc="")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an instance's URL (such as {DEFAULT_URL})"
        )
    return text


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number of seconds")
    return seconds


def _count(value: str) -> int:
    if not value.isdigit() or int(value) == 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive whole number")
    return int(value)


def _window(value: str) -> str:
    if not _WINDOW.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a window such as 30s, 5m, 1h or 300")
    return value


def add_monitor_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``keygen monitor`` and of ``scripts/monitor-id-service.py``."""
    parser.add_argument(
        "--url",
        action="append",
        type=instance_url,
        metavar="URL",
        help=f"an instance to watch; repeat for several (default: {DEFAULT_URL})",
    )
    parser.add_argument(
        "--interval",
        type=_seconds,
        default=DEFAULT_INTERVAL,
        metavar="SECONDS",
        help="seconds between refreshes (default: %(default)g)",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="seconds to wait for each answer before calling an instance unreachable "
        "(default: %(default)g)",
    )
    parser.add_argument(
        "--window",
        type=_window,
        default=DEFAULT_WINDOW,
        help="the span of the trend sparklines, from /metrics/history (default: %(default)s)",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="print one snapshot and exit with the instances' status (see below)",
    )
    parser.add_argument(
        "--frames",
        type=_count,
        metavar="N",
        help="stop after N refreshes and exit with the instances' status (default: run until "
        "Ctrl-C)",
    )
    parser.set_defaults(run=monitor)


def add_monitor_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``keygen monitor``."""
    parser = commands.add_parser(
        "monitor",
        help="a terminal dashboard of one or several instances",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    add_monitor_arguments(parser)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """``keygen monitor`` as a program of its own (``scripts/monitor-id-service.py``)."""
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, epilog=EPILOG)
    add_monitor_arguments(parser)
    return monitor(parser.parse_args(argv))
