"""The nemesis: fault kinds, each a real action with a start and an end (a fault window).

Every fault acts on real processes or on the real TCP path (see ``docs/reliability.md``):

    redis-master-kill      SIGKILL the master; after the failover and the hold, start it again
                           (Sentinel turns it into a replica of the new master)
    redis-master-pause     SIGSTOP the master past the failover, hold, SIGCONT (split brain
                           until Sentinel demotes it)
    redis-lag-failover     pause the replicas, write 40 x 1 MB to the master, pause it, resume
                           the replicas: one that missed the latest writes is promoted
    sentinel-kill          SIGKILL one Sentinel, start it again after the hold
    postgres-kill          SIGKILL the postmaster and all its processes (a crash), start again
    instance-kill          kill -9 one ``keygen serve`` (its whole group), start it again
    partition-postgres     the service's PostgreSQL proxy drops or resets everything
    partition-redis        the proxies in front of every Redis data node drop or reset
    network-delay          every proxy delays each chunk (Redis and PostgreSQL slow, not down)
    all-down               Redis and PostgreSQL proxies cut at once: only the emergency
                           reserve can serve, and without it 503s are expected

Two at once (``overlapping``; ``all`` is the single kinds above):

    postgres-kill+redis-master-kill
                           crash PostgreSQL, then kill the Redis master: the new master's
                           fenced leases need the ledger, so only the reserve can serve
    sentinel-kill+redis-master-kill
                           kill a Sentinel, then the master: the failover with two of three
    all-down+instance-kill cut every layer, kill -9 an instance serving from its reserve,
                           restart it while still cut off (its journal is all it has)

A window opens when the fault is applied and closes when the system is whole again (the
process restarted and, for Redis, every replica in sync with the master Sentinel names).
The plan (kinds, holds, targets, modes) is drawn from a seeded RNG before the run.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from keygen.chaos.instances import ServiceInstance
from keygen.chaos.proxy import Mode, ProxyServer
from keygen.cluster.postgres import PostgresNode
from keygen.cluster.redis import RedisNode
from keygen.cluster.topology import LocalCluster
from keygen.errors import ClusterError

__all__ = [
    "FAULT_KINDS", "KNOWN_KINDS", "OVERLAPPING_KINDS", "FaultWindow", "Nemesis", "PlannedFault",
    "plan_random", "plan_short",
]

FAULT_KINDS = (
    "redis-master-kill",
    "redis-master-pause",
    "redis-lag-failover",
    "sentinel-kill",
    "postgres-kill",
    "instance-kill",
    "partition-postgres",
    "partition-redis",
    "network-delay",
    "all-down",
)
OVERLAPPING_KINDS = (
    "postgres-kill+redis-master-kill",
    "sentinel-kill+redis-master-kill",
    "all-down+instance-kill",
)
KNOWN_KINDS = FAULT_KINDS + OVERLAPPING_KINDS
#: Kinds whose window leaves no layer but the emergency reserve.
ALL_LAYERS_DOWN = frozenset({"all-down", "postgres-kill+redis-master-kill",
                             "all-down+instance-kill"})
LAG_MEGABYTES = 40
RECOVERY_TIMEOUT = 60.0
MIN_GAP = 3.0
PROXY_POSTGRES = "postgres"


@dataclass(frozen=True)
class PlannedFault:
    """One fault of the plan: when (seconds after the load starts), what, for how long."""

    at: float
    kind: str
    hold: float
    target: int = 0  # which Sentinel / instance (modulo their number)
    mode: str = Mode.DROP.value  # for partitions: drop or reset
    delay: float = 0.0  # for network-delay


@dataclass
class FaultWindow:
    """A fault as it happened (``time.time()`` seconds)."""

    kind: str
    start: float
    end: float | None = None
    all_layers_down: bool = False
    detail: str = ""
    error: str | None = None
    steps: list[tuple[float, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_short(kinds: Sequence[str] = FAULT_KINDS, *, seed: int = 0, warmup: float = 5.0,
               hold: float = 4.0, gap: float = 3.0) -> list[PlannedFault]:
    """Every kind once, in the given order, one after another (the CI schedule)."""
    rng = random.Random(seed)
    plan, at = [], warmup
    for kind in kinds:
        plan.append(_planned(rng, kind, at, hold))
        at += hold + gap
    return plan


def plan_random(kinds: Sequence[str], duration: float, *, seed: int, warmup: float = 5.0,
                holds: tuple[float, float] = (2.0, 12.0),
                gaps: tuple[float, float] = (3.0, 15.0)) -> list[PlannedFault]:
    """Kinds drawn at random, with random holds and gaps, until ``duration`` (reproducible
    from ``seed``). Each kind appears once before any repeats, so a run of enough faults
    covers all of them."""
    rng = random.Random(seed)
    plan: list[PlannedFault] = []
    at = warmup
    bag: list[str] = []
    while True:
        if not bag:
            bag = list(kinds)
            rng.shuffle(bag)
        hold = rng.uniform(*holds)
        if at + hold + 20 > duration:
            return plan
        plan.append(_planned(rng, bag.pop(), at, hold))
        at += hold + rng.uniform(*gaps)


def _planned(rng: random.Random, kind: str, at: float, hold: float) -> PlannedFault:
    if kind not in KNOWN_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(KNOWN_KINDS)}")
    return PlannedFault(
        at=round(at, 3), kind=kind, hold=round(hold, 3), target=rng.randrange(1000),
        mode=rng.choice((Mode.DROP.value, Mode.RESET.value)),
        delay=round(rng.uniform(0.05, 0.3), 3),
    )


class Nemesis:
    """Applies a plan of faults to the cluster, the proxies and the instances.

    Args:
        cluster: the running topology.
        proxies: the proxy server holding ``postgres`` and one proxy per Redis node (named
            after the node).
        instances: the ``keygen serve`` instances.
        say: progress reporter.
        min_gap: seconds of calm at least between one window's end and the next start.
    """

    def __init__(self, cluster: LocalCluster, proxies: ProxyServer,
                 instances: Sequence[ServiceInstance], say: Callable[[str], None], *,
                 min_gap: float = MIN_GAP) -> None:
        self.cluster = cluster
        self.proxies = proxies
        self.instances = list(instances)
        self.say = say
        self.min_gap = min_gap
        self.windows: list[FaultWindow] = []
        self.current: FaultWindow | None = None

    @property
    def redis_proxies(self) -> list[str]:
        return [node.name for node in self.cluster.redis_nodes]

    async def run(self, plan: Sequence[PlannedFault], started: float,
                  stop: asyncio.Event) -> None:
        """Apply ``plan`` (``at`` counted from ``started``, a ``time.time()``), one fault at a
        time; a fault that would start late starts as soon as the previous one is over."""
        ready = started
        for fault in plan:
            # A fault that overran pushes the next one back, so that each starts on a
            # whole system and its recovery is measured apart from the next fault's.
            delay = max(started + fault.at, ready) - time.time()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
            if stop.is_set():
                return
            window = await self.apply(fault)
            ready = (window.end or time.time()) + self.min_gap

    async def apply(self, fault: PlannedFault) -> FaultWindow:
        window = FaultWindow(fault.kind, time.time(),
                             all_layers_down=fault.kind in ALL_LAYERS_DOWN)
        self.current = window
        self.windows.append(window)
        action = getattr(self, "_" + fault.kind.replace("+", "_then_").replace("-", "_"))
        try:
            await asyncio.to_thread(action, fault, window)
        except Exception as exc:  # noted in the report (and failing the run), never fatal
            window.error = f"{type(exc).__name__}: {exc}"
            self.say(f"[red]{fault.kind} failed: {window.error[:300]}[/red]")
            await asyncio.to_thread(self.heal)
        finally:
            window.end = time.time()
            self.current = None
        self.say(f"{fault.kind} over in {window.end - window.start:.1f}s: {window.detail}")
        return window

    # -- the fault kinds (each runs in a worker thread) -----------------------------------

    def _step(self, window: FaultWindow, what: str) -> None:
        window.steps.append((round(time.time() - window.start, 3), what))

    def _kill_master(self, window: FaultWindow) -> tuple[RedisNode, RedisNode]:
        """SIGKILL the master and wait for the failover: (the old master, the new one)."""
        master = self.cluster.master()
        master.kill(signal.SIGKILL)
        self._step(window, f"SIGKILL {master.name}")
        new = self.cluster.wait_for_failover(master, RECOVERY_TIMEOUT)
        self._step(window, f"failover to {new.name}")
        return master, new

    def _redis_master_kill(self, fault: PlannedFault, window: FaultWindow) -> None:
        master, new = self._kill_master(window)
        time.sleep(fault.hold)
        master.start()
        self._step(window, f"{master.name} restarted")
        self.cluster.wait_in_sync(RECOVERY_TIMEOUT)
        self._step(window, "replicas in sync")
        window.detail = f"killed {master.name}, failover to {new.name}, rejoined as replica"

    def _redis_master_pause(self, fault: PlannedFault, window: FaultWindow) -> None:
        master = self.cluster.master()
        master.pause()
        self._step(window, f"SIGSTOP {master.name}")
        try:
            new = self.cluster.wait_for_failover(master, RECOVERY_TIMEOUT)
            self._step(window, f"failover to {new.name}")
            time.sleep(fault.hold)
        finally:
            master.resume()
        self._step(window, f"SIGCONT {master.name}")
        self.cluster.wait_in_sync(RECOVERY_TIMEOUT)
        self._step(window, "old master demoted, replicas in sync")
        window.detail = f"paused {master.name} past the failover to {new.name}"

    def _redis_lag_failover(self, fault: PlannedFault, window: FaultWindow) -> None:
        master, replicas = self.cluster.master(), self.cluster.replicas()
        keys = [f"keygen-chaos:filler:{i}" for i in range(LAG_MEGABYTES)]
        for replica in replicas:
            replica.pause()
        self._step(window, "replicas paused")
        try:
            with master.client(socket_timeout=10) as client:
                filler = b"x" * 1024 * 1024
                for key in keys:
                    client.set(key, filler)
            self._step(window, f"{LAG_MEGABYTES} MB written to {master.name}")
            time.sleep(min(fault.hold, 1.0))  # the master acknowledges what replicas miss
            master.pause()
            self._step(window, f"SIGSTOP {master.name}")
        finally:
            for replica in replicas:
                replica.resume()
        self._step(window, "replicas resumed")
        try:
            new = self.cluster.wait_for_failover(master, RECOVERY_TIMEOUT)
            self._step(window, f"failover to {new.name}")
        finally:
            master.resume()
        self.cluster.wait_in_sync(RECOVERY_TIMEOUT)
        with new.client(socket_timeout=10) as client:
            client.delete(*keys)
        self._step(window, "replicas in sync")
        window.detail = f"{master.name} replaced by lagging {new.name}"

    def _sentinel_kill(self, fault: PlannedFault, window: FaultWindow) -> None:
        sentinel = self.cluster.sentinels[fault.target % len(self.cluster.sentinels)]
        sentinel.kill(signal.SIGKILL)
        self._step(window, f"SIGKILL {sentinel.name}")
        time.sleep(fault.hold)
        sentinel.start()
        self._step(window, f"{sentinel.name} restarted")
        window.detail = f"killed {sentinel.name} for {fault.hold:g}s"

    def _postgres_kill(self, fault: PlannedFault, window: FaultWindow) -> None:
        node = self._postgres()
        node.kill()
        self._step(window, "SIGKILL postmaster and backends")
        time.sleep(fault.hold)
        node.start()
        self._step(window, "PostgreSQL restarted (WAL replayed)")
        window.detail = f"PostgreSQL crashed for {fault.hold:g}s"

    def _instance_kill(self, fault: PlannedFault, window: FaultWindow) -> None:
        instance = self.instances[fault.target % len(self.instances)]
        instance.kill(signal.SIGKILL)
        self._step(window, f"kill -9 {instance.name}")
        time.sleep(fault.hold)
        instance.start()
        self._step(window, f"{instance.name} restarted")
        window.detail = f"killed {instance.name} for {fault.hold:g}s"

    def _cut(self, names: list[str], fault: PlannedFault, window: FaultWindow,
             mode: str | None = None) -> None:
        self.proxies.set_mode(names, mode or fault.mode, fault.delay)
        self._step(window, f"{mode or fault.mode}: {', '.join(names)}")
        try:
            time.sleep(fault.hold)
        finally:
            self.proxies.set_mode(names, Mode.PASS)
        self._step(window, "healed")

    def _partition_postgres(self, fault: PlannedFault, window: FaultWindow) -> None:
        self._cut([PROXY_POSTGRES], fault, window)
        window.detail = f"PostgreSQL {fault.mode} for {fault.hold:g}s"

    def _partition_redis(self, fault: PlannedFault, window: FaultWindow) -> None:
        self._cut(self.redis_proxies, fault, window)
        window.detail = f"every Redis node {fault.mode} for {fault.hold:g}s"

    def _network_delay(self, fault: PlannedFault, window: FaultWindow) -> None:
        self._cut([*self.redis_proxies, PROXY_POSTGRES], fault, window, Mode.DELAY.value)
        window.detail = f"+{fault.delay * 1000:.0f} ms per chunk for {fault.hold:g}s"

    def _all_down(self, fault: PlannedFault, window: FaultWindow) -> None:
        self._cut([*self.redis_proxies, PROXY_POSTGRES], fault, window)
        window.detail = f"Redis and PostgreSQL {fault.mode} for {fault.hold:g}s"

    # -- two at once -----------------------------------------------------------------------

    def _postgres_kill_then_redis_master_kill(self, fault: PlannedFault,
                                              window: FaultWindow) -> None:
        postgres = self._postgres()
        postgres.kill()
        self._step(window, "SIGKILL postmaster and backends")
        master, new = self._kill_master(window)
        time.sleep(fault.hold)
        master.start()
        self._step(window, f"{master.name} restarted")
        postgres.start()
        self._step(window, "PostgreSQL restarted (WAL replayed)")
        self.cluster.wait_in_sync(RECOVERY_TIMEOUT)
        self._step(window, "replicas in sync")
        window.detail = (f"PostgreSQL crashed, then {master.name} killed: failover to "
                         f"{new.name} with no ledger")

    def _sentinel_kill_then_redis_master_kill(self, fault: PlannedFault,
                                              window: FaultWindow) -> None:
        sentinel = self.cluster.sentinels[fault.target % len(self.cluster.sentinels)]
        sentinel.kill(signal.SIGKILL)
        self._step(window, f"SIGKILL {sentinel.name}")
        master, new = self._kill_master(window)
        time.sleep(fault.hold)
        master.start()
        sentinel.start()
        self._step(window, f"{master.name} and {sentinel.name} restarted")
        self.cluster.wait_in_sync(RECOVERY_TIMEOUT)
        self.cluster.wait_sentinels_ready(RECOVERY_TIMEOUT)
        self._step(window, "replicas in sync, every Sentinel on the new master")
        window.detail = f"{sentinel.name} killed, then {master.name}: failover to {new.name}"

    def _all_down_then_instance_kill(self, fault: PlannedFault, window: FaultWindow) -> None:
        instance = self.instances[fault.target % len(self.instances)]
        names = [*self.redis_proxies, PROXY_POSTGRES]
        self.proxies.set_mode(names, fault.mode)
        self._step(window, f"{fault.mode}: {', '.join(names)}")
        try:
            time.sleep(fault.hold / 2)  # the instance serves from its reserve
            instance.kill(signal.SIGKILL)
            self._step(window, f"kill -9 {instance.name}")
            instance.start()
            self._step(window, f"{instance.name} restarted, cut off")
            time.sleep(fault.hold / 2)
        finally:
            self.proxies.set_mode(names, Mode.PASS)
        self._step(window, "healed")
        window.detail = (f"Redis and PostgreSQL {fault.mode} for {fault.hold:g}s, "
                         f"{instance.name} killed and restarted inside")

    def _postgres(self) -> PostgresNode:
        if self.cluster.postgres is None:
            raise ClusterError("no PostgreSQL in this cluster")
        return self.cluster.postgres

    # -- repair ---------------------------------------------------------------------------

    def heal(self) -> None:
        """Undo whatever a failed fault left behind: proxies passing, every process running
        and unpaused."""
        self.proxies.set_mode([*self.redis_proxies, PROXY_POSTGRES], Mode.PASS)
        for node in [*self.cluster.redis_nodes, *self.cluster.sentinels]:
            try:
                if node.is_paused():
                    node.resume()
                if not node.is_running():
                    node.start()
            except (ClusterError, OSError) as exc:
                self.say(f"[red]heal: {node.name}: {exc}[/red]")
        try:
            if self.cluster.postgres is not None:
                self.cluster.postgres.ensure_running()
        except (ClusterError, OSError) as exc:
            self.say(f"[red]heal: postgres: {exc}[/red]")
        for instance in self.instances:
            if not instance.is_running():
                try:
                    instance.start()
                except ClusterError as exc:
                    self.say(f"[red]heal: {instance.name}: {exc}[/red]")
