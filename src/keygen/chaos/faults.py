"""The fault kinds: one registry (``FAULTS``), each kind a :class:`Fault` built from shared
steps, acting on real processes or on the real TCP path (see ``docs/reliability.md``). Every
list of kinds (``FAULT_KINDS``, ``OVERLAPPING_KINDS``, ``ALL_LAYERS_DOWN``...) derives from it.

A window opens when the fault is applied and closes when the system is whole again (the
process restarted and, for Redis, every replica in sync with the master Sentinel names).
The command line reads this module, so it imports only the standard library: what the steps
act on (the cluster, the proxies, the instances) is handed to them in an :class:`Act`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from keygen.errors import ClusterError

if TYPE_CHECKING:
    from keygen.chaos.instances import ServiceInstance
    from keygen.chaos.proxy import ProxyServer
    from keygen.cluster import LocalCluster, PostgresNode, RedisNode, SentinelNode

__all__ = [
    "ALL_LAYERS_DOWN",
    "FAULTS",
    "FAULT_KINDS",
    "KIND_GROUPS",
    "KNOWN_KINDS",
    "OVERLAPPING_KINDS",
    "PROXY_POSTGRES",
    "Act",
    "Fault",
    "FaultWindow",
    "PlannedFault",
    "every_link",
]

LAG_MEGABYTES = 40
RECOVERY_TIMEOUT = 60.0
PROXY_POSTGRES = "postgres"
#: The proxy modes (``keygen.chaos.proxy.Mode``) the steps set, by value: the proxies' module
#: is asyncio code that the command line does not import.
PASS, DROP, DELAY = "pass", "drop", "delay"


@dataclass(frozen=True)
class PlannedFault:
    """One fault of the plan: when (seconds after the load starts), what, for how long."""

    at: float
    kind: str
    hold: float
    target: int = 0  # which Sentinel / instance (modulo their number)
    mode: str = DROP  # for partitions: drop or reset
    delay: float = 0.0  # for network-delay

    @property
    def delay_ms(self) -> float:
        return self.delay * 1000


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


class _Process(Protocol):
    name: str

    def kill(self) -> None: ...  # SIGKILL
    def start(self) -> None: ...


@dataclass
class Act:
    """One fault being applied: what it acts on, its entry in the plan, its window, and the
    Redis nodes its steps picked (the master, when a step first names it; the one promoted)."""

    cluster: LocalCluster
    proxies: ProxyServer
    instances: list[ServiceInstance]
    fault: PlannedFault
    window: FaultWindow
    new: RedisNode | None = None
    _master: RedisNode | None = field(default=None, init=False)

    def step(self, what: str) -> None:
        """Record a step in the window, at its time since the window opened."""
        self.window.steps.append((round(time.time() - self.window.start, 3), what))

    @property
    def master(self) -> RedisNode:
        if self._master is None:
            self._master = self.cluster.master()
        return self._master

    @property
    def sentinel(self) -> SentinelNode:
        return self.cluster.sentinels[self.fault.target % len(self.cluster.sentinels)]

    @property
    def instance(self) -> ServiceInstance:
        return self.instances[self.fault.target % len(self.instances)]

    @property
    def postgres(self) -> PostgresNode:
        if self.cluster.postgres is None:
            raise ClusterError("no PostgreSQL in this cluster")
        return self.cluster.postgres


Step = Callable[[Act], None]


@dataclass(frozen=True)
class Fault:
    """A fault kind.

    Attributes:
        name: as ``--faults`` names it; ``a+b`` for two single kinds at once.
        description: what is done.
        steps: run in order, in a worker thread; each records what it did in the window.
        detail: the window's summary once it is over, formatted with ``act`` and ``fault``.
        all_layers_down: only the emergency reserve can serve while it lasts (failed
            requests in its window are expected).
        kills_instance: the run needs two instances (the clients fail over to the other).
    """

    name: str
    description: str
    steps: tuple[Step, ...]
    detail: str
    all_layers_down: bool = False
    kills_instance: bool = False

    @property
    def parts(self) -> list[str]:
        """The single kinds it is made of (itself, for a single kind)."""
        return self.name.split("+")

    def apply(self, act: Act) -> None:
        _run(self.steps, act)
        act.window.detail = self.detail.format(act=act, fault=act.fault)


# -- the shared steps ----------------------------------------------------------------------


def _run(steps: Sequence[Step], act: Act) -> None:
    for step in steps:
        step(act)


def _process(
    pick: Callable[[Act], _Process],
    killed: str,
    restarted: str,
) -> tuple[Step, Step]:
    """Two steps: SIGKILL the process ``pick`` names, and start it again (the notes name it
    in ``{}``)."""

    def kill(act: Act) -> None:
        pick(act).kill()
        act.step(killed.format(pick(act).name))

    def restart(act: Act) -> None:
        pick(act).start()
        act.step(restarted.format(pick(act).name))

    return kill, restart


kill_master, restart_master = _process(lambda act: act.master, "SIGKILL {}", "{} restarted")
kill_sentinel, restart_sentinel = _process(lambda act: act.sentinel, "SIGKILL {}", "{} restarted")
crash_postgres, restart_postgres = _process(
    lambda act: act.postgres,
    "SIGKILL postmaster and backends",
    "PostgreSQL restarted (WAL replayed)",
)
kill_instance, restart_instance = _process(lambda act: act.instance, "kill -9 {}", "{} restarted")
_, restart_instance_cut_off = _process(lambda act: act.instance, "", "{} restarted, cut off")


def _data_dir(act: Act) -> Path:
    return Path(act.instance.env["KEYGEN_DATA_DIR"])


def copy_data_dir(act: Act) -> None:
    """Copy the instance's data dir aside, as a snapshot of its volume would."""
    data = _data_dir(act)
    earlier = data.with_name(f"{data.name}.earlier")
    shutil.rmtree(earlier, ignore_errors=True)
    shutil.copytree(data, earlier)
    act.step(f"{act.instance.name}'s data dir copied aside")


def restore_data_dir(act: Act) -> None:
    """Put back the copy ``copy_data_dir`` took (the instance is down): its journal is
    older than what the instance served since, and must never be served from."""
    data = _data_dir(act)
    shutil.rmtree(data)
    shutil.copytree(data.with_name(f"{data.name}.earlier"), data)
    act.step(f"{act.instance.name}'s data dir restored from the earlier copy")


def hold(share: float = 1.0) -> Step:
    """Sleep for ``share`` of the fault's hold."""
    return lambda act: time.sleep(act.fault.hold * share)


def await_failover(act: Act) -> None:
    act.new = act.cluster.wait_for_failover(act.master, RECOVERY_TIMEOUT)
    act.step(f"failover to {act.new.name}")


def in_sync(note: str = "replicas in sync", *, sentinels: bool = False) -> Step:
    """Wait until every replica is in sync (and every Sentinel on the new master)."""

    def settle(act: Act) -> None:
        act.cluster.wait_in_sync(RECOVERY_TIMEOUT)
        if sentinels:
            act.cluster.wait_sentinels_ready(RECOVERY_TIMEOUT)
        act.step(note)

    return settle


def paused_master(*during: Step) -> Step:
    """SIGSTOP the master, run ``during``, SIGCONT it whatever happens."""

    def pause(act: Act) -> None:
        act.master.pause()
        act.step(f"SIGSTOP {act.master.name}")
        try:
            _run(during, act)
        finally:
            act.master.resume()
        act.step(f"SIGCONT {act.master.name}")

    return pause


def lag_failover(act: Act) -> None:
    """Pause the replicas, write ``LAG_MEGABYTES`` to the master, pause it, resume the
    replicas and wait for the failover: a replica that missed the latest writes is promoted."""
    master, replicas = act.master, act.cluster.replicas()
    for replica in replicas:
        replica.pause()
    act.step("replicas paused")
    try:
        with master.client(socket_timeout=10) as client:
            for key in _FILLER_KEYS:
                client.set(key, b"x" * 1024 * 1024)
        act.step(f"{LAG_MEGABYTES} MB written to {master.name}")
        time.sleep(min(act.fault.hold, 1.0))  # the master acknowledges what replicas miss
        master.pause()
        act.step(f"SIGSTOP {master.name}")
    finally:
        for replica in replicas:
            replica.resume()
    act.step("replicas resumed")
    try:
        await_failover(act)
    finally:
        master.resume()


_FILLER_KEYS = [f"keygen-chaos:filler:{i}" for i in range(LAG_MEGABYTES)]


def drop_filler(act: Act) -> None:
    """Once the replicas are in sync, delete what ``lag_failover`` wrote."""
    act.cluster.wait_in_sync(RECOVERY_TIMEOUT)
    with (act.new or act.cluster.master()).client(socket_timeout=10) as client:
        client.delete(*_FILLER_KEYS)
    act.step("replicas in sync")


def redis_links(cluster: LocalCluster) -> list[str]:
    return [node.name for node in cluster.redis_nodes]


def every_link(cluster: LocalCluster) -> list[str]:
    """Every proxy: one per Redis data node, and PostgreSQL's."""
    return [*redis_links(cluster), PROXY_POSTGRES]


def cut(links: Callable[[LocalCluster], list[str]], *during: Step, mode: str | None = None) -> Step:
    """Set the proxies of ``links`` to ``mode`` (the plan's drop or reset by default), run
    ``during``, and let traffic pass again whatever happens."""

    def cut_links(act: Act) -> None:
        names, chosen = links(act.cluster), mode or act.fault.mode
        act.proxies.set_mode(names, chosen, act.fault.delay)
        act.step(f"{chosen}: {', '.join(names)}")
        try:
            _run(during, act)
        finally:
            act.proxies.set_mode(names, PASS)
        act.step("healed")

    return cut_links


# -- the registry --------------------------------------------------------------------------

FAULTS: dict[str, Fault] = {
    fault.name: fault
    for fault in (
        Fault(
            "redis-master-kill",
            "SIGKILL the master; after the failover and the hold, start it "
            "again (Sentinel turns it into a replica of the new master)",
            (kill_master, await_failover, hold(), restart_master, in_sync()),
            detail="killed {act.master.name}, failover to {act.new.name}, rejoined as replica",
        ),
        Fault(
            "redis-master-pause",
            "SIGSTOP the master past the failover, hold, SIGCONT (split "
            "brain until Sentinel demotes it)",
            (
                paused_master(await_failover, hold()),
                in_sync("old master demoted, replicas in sync"),
            ),
            detail="paused {act.master.name} past the failover to {act.new.name}",
        ),
        Fault(
            "redis-lag-failover",
            "pause the replicas, write 40 x 1 MB to the master, pause it, "
            "resume the replicas: one that missed the latest writes is promoted",
            (lag_failover, drop_filler),
            detail="{act.master.name} replaced by lagging {act.new.name}",
        ),
        Fault(
            "sentinel-kill",
            "SIGKILL one Sentinel, start it again after the hold",
            (kill_sentinel, hold(), restart_sentinel),
            detail="killed {act.sentinel.name} for {fault.hold:g}s",
        ),
        Fault(
            "postgres-kill",
            "SIGKILL the postmaster and all its processes (a crash), start it again",
            (crash_postgres, hold(), restart_postgres),
            detail="PostgreSQL crashed for {fault.hold:g}s",
        ),
        Fault(
            "instance-kill",
            "kill -9 one ``keygen serve`` (its whole group), start it again",
            (kill_instance, hold(), restart_instance),
            detail="killed {act.instance.name} for {fault.hold:g}s",
            kills_instance=True,
        ),
        Fault(
            "partition-postgres",
            "the service's PostgreSQL proxy drops or resets everything",
            (cut(lambda _: [PROXY_POSTGRES], hold()),),
            detail="PostgreSQL {fault.mode} for {fault.hold:g}s",
        ),
        Fault(
            "partition-redis",
            "the proxies in front of every Redis data node drop or reset",
            (cut(redis_links, hold()),),
            detail="every Redis node {fault.mode} for {fault.hold:g}s",
        ),
        Fault(
            "network-delay",
            "every proxy delays each chunk (Redis and PostgreSQL slow, not down)",
            (cut(every_link, hold(), mode=DELAY),),
            detail="+{fault.delay_ms:.0f} ms per chunk for {fault.hold:g}s",
        ),
        Fault(
            "all-down",
            "Redis and PostgreSQL proxies cut at once: only the emergency reserve "
            "can serve, and without it 503s are expected",
            (cut(every_link, hold()),),
            detail="Redis and PostgreSQL {fault.mode} for {fault.hold:g}s",
            all_layers_down=True,
        ),
        # Two at once (``overlapping``), each one window.
        Fault(
            "postgres-kill+redis-master-kill",
            "crash PostgreSQL, then kill the Redis master: "
            "the new master's fenced leases need the ledger, so only the reserve can serve",
            (
                crash_postgres,
                kill_master,
                await_failover,
                hold(),
                restart_master,
                restart_postgres,
                in_sync(),
            ),
            detail="PostgreSQL crashed, then {act.master.name} killed: failover to "
            "{act.new.name} with no ledger",
            all_layers_down=True,
        ),
        Fault(
            "sentinel-kill+redis-master-kill",
            "kill a Sentinel, then the master: the failover with two of three",
            (
                kill_sentinel,
                kill_master,
                await_failover,
                hold(),
                restart_master,
                restart_sentinel,
                in_sync("replicas in sync, every Sentinel on the new master", sentinels=True),
            ),
            detail="{act.sentinel.name} killed, then {act.master.name}: failover to {act.new.name}",
        ),
        Fault(
            "all-down+instance-kill",
            "copy an instance's data dir aside, cut every layer, kill -9 the instance serving "
            "from its reserve, restart it while still cut off (its journal is all it has); "
            "then kill it again, restore its data dir from the earlier copy and restart it, "
            "still cut off (that journal must never be served from)",
            (
                copy_data_dir,
                cut(
                    every_link,
                    hold(1 / 3),
                    kill_instance,
                    restart_instance_cut_off,
                    hold(1 / 3),
                    kill_instance,
                    restore_data_dir,
                    restart_instance_cut_off,
                    hold(1 / 3),
                ),
            ),
            detail="Redis and PostgreSQL {fault.mode} for {fault.hold:g}s, {act.instance.name} "
            "killed and restarted inside, then restored from an earlier copy",
            all_layers_down=True,
            kills_instance=True,
        ),
    )
}

#: The single kinds (``--faults all``), the pairs (``overlapping``), both.
FAULT_KINDS = tuple(name for name, fault in FAULTS.items() if len(fault.parts) == 1)
OVERLAPPING_KINDS = tuple(name for name, fault in FAULTS.items() if len(fault.parts) > 1)
KNOWN_KINDS = FAULT_KINDS + OVERLAPPING_KINDS
#: Kinds whose window leaves no layer but the emergency reserve.
ALL_LAYERS_DOWN = frozenset(name for name, fault in FAULTS.items() if fault.all_layers_down)
#: Names for groups of kinds in ``--faults``.
KIND_GROUPS = {"all": FAULT_KINDS, "overlapping": OVERLAPPING_KINDS}
