"""One ``keygen bench`` run: the targets up, a first allocation by hand, the allocation
steps, the failover scenarios, the tables and the JSON report; everything started is
stopped however the run ends.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from keygen import __version__
from keygen.bench.allocation import Plan, run_allocation
from keygen.bench.failover import SCENARIOS, ScenarioResult, run_scenario
from keygen.bench.generator import Step
from keygen.bench.parallel import PER_PROCESS_RATE, warm
from keygen.bench.stats import StepResult
from keygen.bench.tables import (
    ORIGINAL_ALLOCATION,
    ORIGINAL_FAILOVER,
    allocation_table,
    failover_table,
)
from keygen.bench.targets import Target, Topology, open_topology, preflight, start_bare

__all__ = ["BenchOptions", "BenchReport", "run_bench"]


@dataclass(frozen=True)
class BenchOptions:
    """What to measure and how (the command line's options)."""

    url: str | None = None
    topology: str | None = None
    plan: Plan = field(default_factory=Plan)
    bare: bool = True
    failover: bool = False
    failover_rate: float = 500.0
    down_after_ms: int | None = None
    connections: int = 50
    size: int = 1000
    namespace: str = "bench"
    api_key: str | None = None
    timeout: float = 10.0
    command: str = ""


@dataclass
class BenchReport:
    """The figures, and the tables printed from them."""

    allocation: list[StepResult]
    failover: list[ScenarioResult]
    target: str
    document: dict[str, Any]
    tables: str


class ProgressLine:
    """The live line under the log: the step, the target, the offered rate, the elapsed
    time (rendered by rich's refresh thread, so the generator never pays for it)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.label = "starting"
        self.started = time.monotonic()
        self.length: float | None = None

    def __rich__(self) -> Text:
        elapsed = time.monotonic() - self.started
        of = f" / {self.length:g} s" if self.length else " s"
        return Text(f"{self.label} · {elapsed:5.1f}{of}", style="cyan")

    def step(self, what: str, target: str, rate: float, duration: float | None) -> None:
        self.label = f"{what}: {target} at {rate:,.0f} req/s offered"
        self.started, self.length = time.monotonic(), duration

    def say(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.console.print(f"[dim]{stamp}[/dim] {escape(message)}", highlight=False)


def _pool(options: BenchOptions, stack: ExitStack) -> ProcessPoolExecutor | None:
    """Generator processes, started once, for the steps one process cannot send alone."""
    if not options.plan.saturate and max(options.plan.rates) <= PER_PROCESS_RATE:
        return None
    # spawn: the parent runs rich's refresh thread, and a fork would copy it mid-render.
    processes = os.cpu_count() or 1
    pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
    stack.callback(pool.shutdown, cancel_futures=True)
    warm(pool, processes)
    return pool


def _targets(options: BenchOptions, workdir: Path, stack: ExitStack, say: Any) -> Topology:
    if options.url is not None:
        return Topology(Target("keygen", options.url.rstrip("/")))
    assert options.topology is not None
    return open_topology(options.topology, workdir, stack, say, options.down_after_ms)


def run_bench(options: BenchOptions, console: Console) -> BenchReport:
    """Run it all; raise ``BenchError`` (or ``ClusterError``) when a target cannot be used."""
    line = ProgressLine(console)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="keygen-bench-")))
        workdir.chmod(0o755)  # PostgreSQL runs as its own user, which must reach its dir
        stack.enter_context(Live(line, console=console, refresh_per_second=4, transient=True))
        topology = _targets(options, workdir, stack, line.say)
        targets = [topology.target]
        if options.bare:
            line.say("starting the bare app")
            targets.append(start_bare(workdir / "bare", stack))
        for target in targets:
            source = preflight(target, options.size, options.namespace, options.api_key)
            line.say(f"{target.name} at {target.url} answers; served by {source}")
        template = Step(
            "",
            0.0,
            0.0,
            connections=options.connections,
            size=options.size,
            namespace=options.namespace,
            api_key=options.api_key,
            timeout=options.timeout,
        )

        def on_step(what: str, target: str, rate: float, duration: float) -> None:
            line.step(what, target, rate, duration)

        pool = _pool(options, stack)
        results = run_allocation(targets, options.plan, template, pool, on_step)
        scenarios: list[ScenarioResult] = []
        if options.failover:
            for scenario in SCENARIOS:
                line.step(scenario.name, topology.target.name, options.failover_rate, None)
                step = Step(topology.target.url, options.failover_rate, None, **_same(template))
                scenarios.append(run_scenario(scenario, topology, step, line.say))
    names = [t.name for t in targets]
    tables = "### Allocation performance\n\n" + allocation_table(results, names)
    if scenarios:
        tables += "\n### Failover performance\n\n" + failover_table(scenarios)
    document = _document(options, topology.target, results, scenarios)
    return BenchReport(results, scenarios, topology.target.name, document, tables)


def _same(template: Step) -> dict[str, Any]:
    keep = ("connections", "size", "namespace", "api_key", "timeout")
    return {name: getattr(template, name) for name in keep}


def _document(
    options: BenchOptions,
    target: Target,
    results: list[StepResult],
    scenarios: list[ScenarioResult],
) -> dict[str, Any]:
    return {
        "command": options.command,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "keygen": __version__,
        },
        "target": {"name": target.name, "url": options.url, "topology": options.topology},
        "options": {k: v for k, v in asdict(options).items() if k not in ("api_key", "command")},
        "allocation": [r.as_dict() for r in results],
        "failover": [s.as_dict() for s in scenarios],
        "original": {
            "allocation": {f"{k:g}": v for k, v in ORIGINAL_ALLOCATION.items()},
            "failover": ORIGINAL_FAILOVER,
        },
    }
