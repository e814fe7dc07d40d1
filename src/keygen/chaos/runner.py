"""``keygen chaos``: a local topology, N instances, open-loop load, a nemesis, the checker.

Everything runs on 127.0.0.1 under ``--out`` (default ``.keygen/chaos/<UTC time>``)::

    cluster/          the LocalCluster (Redis master + 2 replicas, 3 Sentinels, PostgreSQL)
    instance-N/       each ``keygen serve``: its data dir (reserve journals) and serve.log
    acks.jsonl        every acknowledged range, as it arrived
    failures.jsonl    every failed request
    plan.json         the faults planned (reproducible from --seed)
    report.json/.md   the report (see report.py)

The instances reach PostgreSQL and each Redis data node through proxies (proxy.py), which
the nemesis uses for partitions: ``KEYGEN_DATABASE_URL`` names the PostgreSQL proxy, and
``KEYGEN_REDIS_ADDRESS_MAP`` maps each address Sentinel hands out to that node's proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import signal
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from keygen.chaos.instances import ServiceInstance
from keygen.chaos.load import LoadConfig, LoadGenerator
from keygen.chaos.nemesis import (
    FAULT_KINDS,
    KNOWN_KINDS,
    OVERLAPPING_KINDS,
    PROXY_POSTGRES,
    FaultWindow,
    Nemesis,
    PlannedFault,
    plan_random,
    plan_short,
)
from keygen.chaos.proxy import ProxyServer
from keygen.chaos.report import (
    build_report,
    markdown,
    read_acks,
    read_attempts,
    read_failures,
)
from keygen.cluster import processes as _proc
from keygen.cluster.postgres import with_database
from keygen.cluster.topology import LocalCluster
from keygen.errors import ClusterError

__all__ = ["ChaosOptions", "add_chaos_command", "run_chaos"]

DOWN_AFTER_MS = 1000
TAIL = 5.0  # seconds of load after the last fault of a schedule

#: The service's settings for the run: short timeouts, so that a layer that hangs is left
#: quickly and the breakers probe again soon.
SERVICE_ENV = {
    "ALLOCATION_TIMEOUT": "4",
    "KEYGEN_REDIS_TIMEOUT": "0.5",
    "KEYGEN_REDIS_SOCKET_TIMEOUT": "0.25",
    "KEYGEN_BREAKER_RESET_TIMEOUT": "0.5",
    "KEYGEN_DB_CONNECT_TIMEOUT": "1",
    "KEYGEN_DB_COMMAND_TIMEOUT": "2",
    "KEYGEN_HEALTH_TIMEOUT": "0.5",
    "KEYGEN_LOG_LEVEL": "warning",
}


@dataclass
class ChaosOptions:
    """What ``keygen chaos`` runs (the command line's options)."""

    duration: float = 120.0
    instances: int = 2
    rate: float = 200.0
    seed: int = 0
    faults: Sequence[str] = FAULT_KINDS
    schedule: str | None = None  # "short": every kind once, then stop
    out: Path | None = None
    clients: int = 64
    namespaces: Sequence[str] = ("default", "orders", "users")
    extra_env: dict[str, str] = field(default_factory=dict)

    def command(self) -> str:
        argv = ["keygen", "chaos", "--instances", str(self.instances), "--rate", f"{self.rate:g}",
                "--seed", str(self.seed), "--faults", ",".join(self.faults)]
        argv += (["--schedule", self.schedule] if self.schedule
                 else ["--duration", f"{self.duration:g}"])
        argv += [f"--env={name}={value}" for name, value in self.extra_env.items()]
        return shlex.join(argv)


@dataclass
class ChaosRun:
    """What the run produced."""

    report: dict[str, Any]
    out: Path
    interrupted: bool = False

    @property
    def passed(self) -> bool:
        return (bool(self.report["passed"]) and self.report["faults_failed"] == 0
                and not self.interrupted)


class _Setup:
    """The processes of a run, torn down in reverse however the run ends."""

    def __init__(self, options: ChaosOptions, out: Path, console: Console) -> None:
        self.options = options
        self.out = out
        self.console = console
        self.cluster: LocalCluster | None = None
        self.proxies: ProxyServer | None = None
        self.instances: list[ServiceInstance] = []

    def say(self, message: str) -> None:
        self.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}",
                           highlight=False)

    def up(self) -> None:
        self.cluster = LocalCluster(self.out / "cluster", down_after_ms=DOWN_AFTER_MS,
                                    progress=lambda m: self.say(escape(m)))
        self.cluster.up()
        assert self.cluster.postgres is not None
        self.proxies = ProxyServer()
        pg = self.proxies.add(PROXY_POSTGRES, self.cluster.postgres.port)
        address_map = []
        for node in self.cluster.redis_nodes:
            proxy = self.proxies.add(node.name, node.port)
            address_map.append(f"127.0.0.1:{node.port}={proxy.address}")
        env = {
            **self.cluster.env(), **SERVICE_ENV,
            "KEYGEN_DATABASE_URL": with_database(
                f"postgresql://postgres@{pg.address}/postgres",
                self.cluster.postgres.database or "keygen"),
            "KEYGEN_REDIS_ADDRESS_MAP": ",".join(address_map),
            "KEYGEN_RESERVE_NAMESPACES": ",".join(self.options.namespaces),
            **self.options.extra_env,
        }
        ports = _proc.free_ports(self.options.instances)
        self.instances = [
            ServiceInstance(f"instance-{i + 1}", port, env, self.out / f"instance-{i + 1}")
            for i, port in enumerate(ports)
        ]
        with ThreadPoolExecutor(max_workers=len(self.instances)) as pool:
            list(pool.map(lambda instance: instance.start(), self.instances))
        self.say(f"{len(self.instances)} instances up: "
                 + ", ".join(i.url for i in self.instances))

    def down(self) -> None:
        for instance in self.instances:
            try:
                instance.kill()
            except (OSError, ClusterError) as exc:
                self.say(f"[red]could not stop {instance.name}: {exc}[/red]")
        if self.proxies is not None:
            self.proxies.close()
        if self.cluster is not None:
            for node in [*self.cluster.redis_nodes, *self.cluster.sentinels]:
                try:
                    if node.is_paused():
                        node.resume()
                except (ClusterError, OSError):
                    pass
            self.cluster.down()
            self.cluster.kill_all()


def _status_table(load: LoadGenerator, nemesis: Nemesis, started: float) -> Table:
    stats = load.stats
    now = time.time()
    table = Table(show_header=False, box=None)
    table.add_row("elapsed", f"{now - started:.0f} s")
    table.add_row("acknowledged", f"{stats.acknowledged:,} ({stats.ids:,} IDs)")
    table.add_row("failed", f"{stats.failed:,} " + ", ".join(
        f"{k} {v}" for k, v in stats.causes.most_common(3)))
    table.add_row("in flight", f"{stats.in_flight:,} (shed {stats.shed:,})")
    last = stats.rate_last_second(now)
    table.add_row("last second", ", ".join(f"{k} {v}" for k, v in sorted(last.items())) or "-")
    current = nemesis.current
    table.add_row("fault", f"[yellow]{current.kind}[/yellow] for {now - current.start:.0f} s"
                  if current else "-")
    table.add_row("faults done", str(len([w for w in nemesis.windows if w.end])))
    return table


async def _drive(setup: _Setup, plan: list[PlannedFault], load: LoadGenerator,
                 nemesis: Nemesis, started: float) -> None:
    options = setup.options
    stop = asyncio.Event()
    load_task = asyncio.create_task(load.run())
    nemesis_task = asyncio.create_task(nemesis.run(plan, started, stop))

    async def show() -> None:
        if setup.console.is_terminal:
            with Live(_status_table(load, nemesis, started), console=setup.console,
                      refresh_per_second=2, transient=True) as live:
                while True:
                    await asyncio.sleep(0.5)
                    live.update(_status_table(load, nemesis, started))
        while True:
            await asyncio.sleep(10)
            stats = load.stats
            setup.say(f"{time.time() - started:.0f}s: {stats.acknowledged:,} acknowledged, "
                      f"{stats.failed:,} failed, {stats.in_flight} in flight")

    shower = asyncio.create_task(show())
    _sigterm.watch(asyncio.current_task())
    try:
        if options.schedule:
            await nemesis_task
            await asyncio.sleep(TAIL)
        else:
            await asyncio.wait({nemesis_task}, timeout=max(0.0, started + options.duration
                                                           - time.time()))
            stop.set()
            await nemesis_task
            # The plan ends a little before the duration; the load does not.
            await asyncio.sleep(max(0.0, started + options.duration - time.time()))
    finally:
        _sigterm.watch(None)
        stop.set()
        load.stop()
        await load_task
        shower.cancel()
        await asyncio.gather(shower, return_exceptions=True)


def run_chaos(options: ChaosOptions, console: Console | None = None) -> ChaosRun:
    """Run the whole thing; return the report (written to ``out`` too)."""
    console = console or Console(stderr=True)
    out = (options.out or Path(".keygen/chaos")
           / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")).absolute()
    out.mkdir(parents=True, exist_ok=True)
    kinds = list(options.faults)
    plan = (plan_short(kinds, seed=options.seed) if options.schedule == "short"
            else plan_random(kinds, options.duration, seed=options.seed))
    (out / "plan.json").write_text(json.dumps([asdict(p) for p in plan], indent=1) + "\n")
    setup = _Setup(options, out, console)
    windows: list[FaultWindow] = []
    healths: list[dict[str, Any] | None] = []
    started = ended = time.time()
    interrupted = False
    load: LoadGenerator | None = None
    try:
        setup.up()
        assert setup.cluster is not None and setup.proxies is not None
        load = LoadGenerator(
            LoadConfig([i.url for i in setup.instances], rate=options.rate,
                       clients=options.clients, namespaces=options.namespaces),
            out, seed=options.seed,
        )
        nemesis = Nemesis(setup.cluster, setup.proxies, setup.instances, setup.say)
        setup.say(f"load at {options.rate:g} req/s; {len(plan)} faults planned "
                  f"({'short schedule' if options.schedule else f'{options.duration:g} s'})")
        started = time.time()
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(_drive(setup, plan, load, nemesis, started))
        except KeyboardInterrupt:  # report what was recorded so far, then say so
            interrupted = True
        except asyncio.CancelledError:
            if not _sigterm.received:
                raise
            interrupted = True
        finally:
            ended = time.time()
            windows = nemesis.windows
            healths = [instance.health() for instance in setup.instances]
    finally:
        setup.say("stopping everything")
        setup.down()
    report = build_report(
        read_acks(out / "acks.jsonl"), read_failures(out / "failures.jsonl"),
        [w.as_dict() for w in windows], started=started, ended=ended,
        instances_health=healths, attempts=read_attempts(out / "attempts.jsonl"),
        meta={"command": options.command(), "seed": options.seed,
              "instances": options.instances, "rate": options.rate,
              "schedule": options.schedule, "out": str(out), "interrupted": interrupted,
              "sent": load.stats.sent if load else 0, "shed": load.stats.shed if load else 0,
              "windows": [w.as_dict() for w in windows]},
    )
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(markdown(report))
    return ChaosRun(report, out, interrupted)


#: Names for groups of kinds in ``--faults``.
KIND_GROUPS = {"all": FAULT_KINDS, "overlapping": OVERLAPPING_KINDS}


def _kinds(value: str) -> list[str]:
    """``--faults``: kinds and group names, comma-separated, each kind once."""
    kinds: list[str] = []
    for name in (k.strip() for k in value.split(",") if k.strip()):
        for kind in KIND_GROUPS.get(name, (name,)):
            if kind not in kinds:
                kinds.append(kind)
    unknown = [k for k in kinds if k not in KNOWN_KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown fault kinds {unknown}; known: all (the single kinds), overlapping "
            f"(two at once), {', '.join(KNOWN_KINDS)}")
    return kinds


def _env_pair(value: str) -> tuple[str, str]:
    name, sep, setting = value.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{value!r} is not NAME=VALUE")
    return name, setting


class _Sigterm:
    """The SIGTERM handler of ``keygen chaos``: the run stops as on Ctrl-C.

    Outside the event loop it raises KeyboardInterrupt where the run is. While the loop runs,
    it cancels the load phase's task instead: raised there, the exception could land inside
    a transport's callback, and the loop would log it and carry on.
    """

    def __init__(self) -> None:
        self.received = False
        self._task: asyncio.Task[Any] | None = None

    def watch(self, task: asyncio.Task[Any] | None) -> None:
        """Cancel ``task`` on SIGTERM (None: raise KeyboardInterrupt again)."""
        self._task = task

    def __call__(self, signum: int, frame: object) -> None:
        # Once: a second SIGTERM must not cut short the stopping of what the run started.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self.received = True
        if self._task is not None and not self._task.done():
            self._task.get_loop().call_soon_threadsafe(self._task.cancel)
            return
        raise KeyboardInterrupt


_sigterm = _Sigterm()


def chaos(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    if args.instances < 2 and any("instance-kill" in kind for kind in args.faults):
        console.print("[red]keygen chaos: instance-kill needs --instances 2 or more (the "
                      "clients fail over to another instance)[/red]")
        return 2
    options = ChaosOptions(duration=args.duration, instances=args.instances, rate=args.rate,
                           seed=args.seed, faults=args.faults, schedule=args.schedule,
                           out=args.out, extra_env=dict(args.env))
    # SIGTERM (a CI job's timeout, `kill`) stops the run as Ctrl-C does: every process it
    # started is stopped and the report of the run so far is written.
    previous = signal.signal(signal.SIGTERM, _sigterm)
    try:
        run = run_chaos(options, console)
    except ClusterError as exc:
        console.print(f"[red]keygen chaos: {escape(str(exc))}[/red]")
        return 2
    except KeyboardInterrupt:
        console.print("[red]keygen chaos: interrupted; everything started was stopped[/red]")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    report = run.report
    print(markdown(report))
    colour = "green" if run.passed else "red"
    console.print(
        f"[{colour}]{'PASSED' if run.passed else 'FAILED'}[/{colour}]: "
        f"{report['acknowledged']:,} acknowledged, {report['checker']['duplicate_ids']} "
        f"duplicate IDs, {report['unexpected_failures']} unexpected failures, "
        f"{report['faults_failed']} faults not applied; report in {run.out}",
        highlight=False,
    )
    if run.interrupted:
        console.print("[red]interrupted: the report covers the run until then[/red]")
        return 130
    return 0 if run.passed else 1


def add_chaos_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``chaos`` to the ``keygen`` command."""
    p = subparsers.add_parser(
        "chaos", help="faults under load on a local topology, then the overlap checker",
    )
    p.add_argument("--duration", type=float, default=120.0, metavar="S",
                   help="seconds of load with random faults (default %(default)s)")
    p.add_argument("--instances", type=int, default=2, metavar="N",
                   help="keygen serve instances (default %(default)s)")
    p.add_argument("--rate", type=float, default=200.0, metavar="R",
                   help="requests per second, open loop (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seeds the plan and the load")
    p.add_argument("--faults", type=_kinds, default=list(FAULT_KINDS), metavar="KINDS",
                   help="comma-separated fault kinds and groups: all (the single kinds, "
                   "the default), overlapping (two at once), "
                   + ", ".join(KNOWN_KINDS))
    p.add_argument("--schedule", choices=["short"], default=None,
                   help="short: every kind once, one after another (~2 min; CI)")
    p.add_argument("--env", action="append", type=_env_pair, default=[],
                   metavar="NAME=VALUE", help="an extra setting for every instance, e.g. "
                   "KEYGEN_RESERVE=off to see the all-down fault without the reserve "
                   "(repeatable)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="where everything goes (default .keygen/chaos/<UTC time>)")
    p.set_defaults(run=chaos)
