"""A chaos run: a local topology, N instances, open-loop load, a nemesis, the checker.

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
With ``--secure`` the topology is the secure one (TLS, ACL users, passwords): the proxies
listen on 127.0.0.1 too, so the certificates still match, and forward the TLS bytes as they
are, which is all a partition or a delay needs.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvloop
from rich.console import Console
from rich.markup import escape

from keygen.chaos.faults import PROXY_POSTGRES, FaultWindow, PlannedFault
from keygen.chaos.instances import ServiceInstance
from keygen.chaos.load import LoadConfig, LoadGenerator
from keygen.chaos.nemesis import Nemesis, plan_random, plan_short
from keygen.chaos.proxy import ProxyServer
from keygen.chaos.report import build_report, markdown, read_acks, read_attempts, read_failures
from keygen.chaos.view import show
from keygen.cluster import LocalCluster
from keygen.cluster import processes as _proc
from keygen.cluster.postgres import with_address
from keygen.errors import ChaosError, ClusterError

if TYPE_CHECKING:
    from keygen.chaos.cli import ChaosOptions
    from keygen.snapshots import HealthSnapshot

__all__ = ["ChaosRun", "run_chaos", "sigterm"]

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

#: Without ``--secure`` the run sends no keys, and an instance restarted while every layer is
#: cut off (``all-down+instance-kill``) could not read the key table: with keys checked it
#: would refuse everything (503 ``keys_unavailable``) and the fault would not test its
#: journal. With ``--secure`` keys stay checked (``KEYGEN_AUTH=auto``), as in production.
OPEN_ENV = {"KEYGEN_AUTH": "off"}


@dataclass
class ChaosRun:
    """What the run produced."""

    report: dict[str, Any]
    out: Path
    interrupted: bool = False

    @property
    def passed(self) -> bool:
        return (
            bool(self.report["passed"])
            and self.report["faults_failed"] == 0
            and not self.interrupted
        )


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
        self.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}", highlight=False)

    def up(self) -> None:
        self.cluster = LocalCluster(
            self.out / "cluster",
            down_after_ms=DOWN_AFTER_MS,
            progress=lambda m: self.say(escape(m)),
            secure=self.options.secure,
        )
        self.cluster.up()
        assert self.cluster.postgres is not None
        self.proxies = ProxyServer()
        pg = self.proxies.add(PROXY_POSTGRES, self.cluster.postgres.port)
        address_map = []
        for node in self.cluster.redis_nodes:
            proxy = self.proxies.add(node.name, node.port)
            address_map.append(f"127.0.0.1:{node.port}={proxy.address}")
        env = {
            **self.cluster.env(),
            **SERVICE_ENV,
            **({} if self.options.secure else OPEN_ENV),
            "KEYGEN_DATABASE_URL": with_address(self.cluster.postgres.database_url, pg.address),
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
        self.say(f"{len(self.instances)} instances up: " + ", ".join(i.url for i in self.instances))

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


async def _drive(
    setup: _Setup, plan: list[PlannedFault], load: LoadGenerator, nemesis: Nemesis, started: float
) -> None:
    options = setup.options
    stop = asyncio.Event()
    load_task = asyncio.create_task(load.run())
    nemesis_task = asyncio.create_task(nemesis.run(plan, started, stop))
    ends_at = None if options.schedule else started + options.duration
    shower = asyncio.create_task(
        show(setup.console, setup.say, load, nemesis, started, ends_at, len(plan))
    )
    sigterm.watch(asyncio.current_task())
    try:
        if options.schedule:
            await nemesis_task
            await asyncio.sleep(TAIL)
        else:
            await asyncio.wait(
                {nemesis_task}, timeout=max(0.0, started + options.duration - time.time())
            )
            stop.set()
            await nemesis_task
            # The plan ends a little before the duration; the load does not.
            await asyncio.sleep(max(0.0, started + options.duration - time.time()))
    finally:
        sigterm.watch(None)
        stop.set()
        load.stop()
        await load_task
        shower.cancel()
        await asyncio.gather(shower, return_exceptions=True)


def run_chaos(options: ChaosOptions, console: Console | None = None) -> ChaosRun:
    """Run the whole thing; return the report (written to ``out`` too)."""
    console = console or Console(stderr=True)
    out = (
        options.out or Path(".keygen/chaos") / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    ).absolute()
    out.mkdir(parents=True, exist_ok=True)
    kinds = list(options.faults)
    plan = (
        plan_short(kinds, seed=options.seed)
        if options.schedule == "short"
        else plan_random(kinds, options.duration, seed=options.seed)
    )
    if not plan:
        raise ChaosError(
            f"--duration {options.duration:g} leaves no room for a fault (a fault needs a warm-up "
            f"of 5 s, its hold of up to 12 s and 20 s to recover): use --duration 40 or more, "
            "or --schedule short"
        )
    (out / "plan.json").write_text(json.dumps([asdict(p) for p in plan], indent=1) + "\n")
    setup = _Setup(options, out, console)
    windows: list[FaultWindow] = []
    healths: list[HealthSnapshot | None] = []
    started = ended = time.time()
    interrupted = False
    load: LoadGenerator | None = None
    try:
        setup.up()
        assert setup.cluster is not None and setup.proxies is not None
        load = LoadGenerator(
            LoadConfig(
                [i.url for i in setup.instances],
                rate=options.rate,
                clients=options.clients,
                namespaces=options.namespaces,
            ),
            out,
            seed=options.seed,
        )
        nemesis = Nemesis(setup.cluster, setup.proxies, setup.instances, setup.say)
        setup.say(
            f"load at {options.rate:g} req/s; {len(plan)} faults planned "
            f"({'short schedule' if options.schedule else f'{options.duration:g} s'})"
        )
        started = time.time()
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(_drive(setup, plan, load, nemesis, started))
        except KeyboardInterrupt:  # report what was recorded so far, then say so
            interrupted = True
        except asyncio.CancelledError:
            if not sigterm.received:
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
        read_acks(out / "acks.jsonl"),
        read_failures(out / "failures.jsonl"),
        windows,
        started=started,
        ended=ended,
        instances_health=healths,
        attempts=read_attempts(out / "attempts.jsonl"),
        meta={
            "command": options.command(),
            "seed": options.seed,
            "instances": options.instances,
            "rate": options.rate,
            "schedule": options.schedule,
            "secure": options.secure,
            "out": str(out),
            "interrupted": interrupted,
            "sent": load.stats.sent if load else 0,
            "shed": load.stats.shed if load else 0,
            "windows": [w.as_dict() for w in windows],
        },
    )
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(markdown(report))
    return ChaosRun(report, out, interrupted)


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


#: Installed by ``keygen chaos`` (``cli.chaos``) for the length of the run.
sigterm = _Sigterm()
