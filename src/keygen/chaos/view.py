"""The live view of a chaos run: a status table on a terminal, a line every 10 s otherwise."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from rich.console import Console
from rich.live import Live
from rich.table import Table

from keygen.chaos.load import LoadGenerator
from keygen.chaos.nemesis import Nemesis

__all__ = ["show", "status_table"]


def status_table(
    load: LoadGenerator, nemesis: Nemesis, started: float, ends_at: float | None, planned: int
) -> Table:
    stats = load.stats
    now = time.time()
    table = Table(show_header=False, box=None)
    table.add_row("elapsed", f"{now - started:.0f} s")
    table.add_row("time left", _left(now, ends_at, nemesis, planned))
    table.add_row("acknowledged", f"{stats.acknowledged:,} ({stats.ids:,} IDs)")
    table.add_row(
        "failed",
        f"{stats.failed:,} " + ", ".join(f"{k} {v}" for k, v in stats.causes.most_common(3)),
    )
    table.add_row("in flight", f"{stats.in_flight:,} (shed {stats.shed:,})")
    last = stats.rate_last_second(now)
    table.add_row("last second", ", ".join(f"{k} {v}" for k, v in sorted(last.items())) or "-")
    current = nemesis.current
    table.add_row(
        "fault",
        f"[yellow]{current.kind}[/yellow] for {now - current.start:.0f} s" if current else "-",
    )
    table.add_row("faults done", f"{len([w for w in nemesis.windows if w.end])} of {planned}")
    return table


def _left(now: float, ends_at: float | None, nemesis: Nemesis, planned: int) -> str:
    if ends_at is not None:
        return f"{max(0.0, ends_at - now):.0f} s"
    return f"{planned - len(nemesis.windows)} faults to start, then the tail"


async def show(
    console: Console,
    say: Callable[[str], None],
    load: LoadGenerator,
    nemesis: Nemesis,
    started: float,
    ends_at: float | None,
    planned: int,
) -> None:
    """Until cancelled: the table, live, on a terminal; else a line of figures every 10 s."""
    if console.is_terminal:
        with Live(
            status_table(load, nemesis, started, ends_at, planned),
            console=console,
            refresh_per_second=2,
            transient=True,
        ) as live:
            while True:
                await asyncio.sleep(0.5)
                live.update(status_table(load, nemesis, started, ends_at, planned))
    while True:
        await asyncio.sleep(10)
        stats = load.stats
        say(
            f"{time.time() - started:.0f}s ({_left(time.time(), ends_at, nemesis, planned)} "
            f"left): {stats.acknowledged:,} acknowledged, {stats.failed:,} failed, "
            f"{stats.in_flight} in flight"
        )
