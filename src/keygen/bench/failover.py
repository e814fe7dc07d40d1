"""The *Failover performance* table: faults of :mod:`keygen.chaos.faults` applied to the real
local cluster while the generator sends ``POST /allocate`` at a fixed rate.

Each scenario runs one fault (its steps, through an :class:`~keygen.chaos.faults.Act`, as
``keygen chaos`` applies them) with an observer beside it that looks every 0.1 s at what
each Sentinel says of the master and at the service's ``/health``. Times are seconds after
the fault was applied:

    sdown        the first Sentinel flags the master ``s_down`` (it stopped answering for
                 ``down-after-milliseconds``); ``odown``: the quorum agrees
    health_down  the service's ``/health`` first shows Redis not healthy
    promoted     most Sentinels name another node as master
    left / back  the first answer not served by ``redis_sentinel``, and the first one served
                 by it again after that (and after the promotion, if there was one)

The service impact is read from every answer's time and source: the longest span without a
successful allocation, the failed requests, the requests served by each layer.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import redis

from keygen.bench import BenchError
from keygen.bench.generator import Step, Timeline, run_step
from keygen.chaos.faults import FAULTS, Act, Fault, FaultWindow, PlannedFault, cut, hold
from keygen.constants import SOURCE_REDIS
from keygen.errors import ClusterError

if TYPE_CHECKING:
    from keygen.bench.targets import Topology
    from keygen.cluster.topology import LocalCluster
    from keygen.progress import Progress

__all__ = ["SCENARIOS", "Scenario", "ScenarioResult", "gaps", "run_scenario", "shifts"]

#: Seconds of steady load before the fault, and after the service is whole again.
LEAD, TAIL = 2.0, 2.0
#: Seconds the service may take to serve from redis_sentinel (before, and after a fault).
SETTLE_TIMEOUT = 60.0
OBSERVE_INTERVAL = 0.1


def _master_link(cluster: LocalCluster) -> list[str]:
    return [cluster.master().name]


@dataclass(frozen=True)
class Scenario:
    """A row: the fault, how long it holds, and which of the original's rows it matches."""

    original: str
    name: str
    fault: Fault
    hold: float = 1.0
    needs_proxies: bool = False


SCENARIOS = (
    Scenario("master", "Master failure (kill -9)", FAULTS["redis-master-kill"]),
    Scenario(
        "partition",
        "Network partition (master SIGSTOPped: cut off from all)",
        FAULTS["redis-master-pause"],
    ),
    Scenario(
        "partition",
        "Network partition (service-to-master link dropped, 5 s)",
        Fault(
            "partition-redis-master",
            "the proxy between the service and the master drops everything",
            (cut(_master_link, hold()),),
            detail="the service's link to the master dropped for {fault.hold:g}s",
        ),
        hold=5.0,
        needs_proxies=True,
    ),
    Scenario("sentinel", "Sentinel failure (kill -9 one of 3, 5 s)", FAULTS["sentinel-kill"], 5.0),
)


@dataclass
class ScenarioResult:
    """One row of the table: times in seconds after the fault (None: did not happen)."""

    name: str
    original: str
    sdown: float | None = None
    odown: float | None = None
    health_down: float | None = None
    promoted: float | None = None
    left: float | None = None
    back: float | None = None
    longest_gap: float = 0.0
    failed: int = 0
    requests: int = 0
    sources: Counter[str] = field(default_factory=Counter)
    steps: list[tuple[float, str]] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {**vars(self), "sources": dict(self.sources)}


def gaps(times: Sequence[float], sources: Sequence[str | None], since: float) -> float:
    """The longest span without a successful answer from the last success before ``since``
    to the last answer (answers in time order)."""
    ok = [t for t, s in zip(times, sources, strict=True) if s is not None]
    before = [t for t in ok if t < since]
    after = [t for t in ok if t >= since]
    marks = before[-1:] + after
    end = times[-1] if times else since
    if not marks:
        return end - since
    spans = [b - a for a, b in itertools.pairwise(marks)]
    return max([*spans, end - marks[-1], 0.0])


def shifts(
    times: Sequence[float], sources: Sequence[str | None], since: float, promoted: float | None
) -> tuple[float | None, float | None]:
    """(left, back): when the answers first stopped coming from redis_sentinel after
    ``since``, and when they came from it again, after ``promoted`` too (absolute times)."""
    left = back = None
    for at, source in zip(times, sources, strict=True):
        if at < since:
            continue
        if left is None:
            if source != SOURCE_REDIS:
                left = at
        elif source == SOURCE_REDIS and (promoted is None or at >= promoted):
            back = at
            break
    return left, back


class _Observer(threading.Thread):
    """Looks at the Sentinels and the service's /health until stopped; keeps the first time
    each event was seen."""

    def __init__(self, cluster: LocalCluster, url: str) -> None:
        super().__init__(name="keygen-bench-observer", daemon=True)
        self.cluster, self.url = cluster, url
        self.old_port = cluster.master().port
        self.seen: dict[str, float] = {}
        self.halt = threading.Event()

    def note(self, event: str) -> None:
        self.seen.setdefault(event, time.monotonic())

    def run(self) -> None:
        while not self.halt.is_set():
            self.look()
            self.halt.wait(OBSERVE_INTERVAL)

    def look(self) -> None:
        for sentinel in self.cluster.sentinels:
            try:
                if not sentinel.is_running() or sentinel.is_paused():
                    continue
                flags = sentinel.master_state().get("flags", "")
            except (redis.RedisError, ClusterError, OSError):  # being killed: skip it
                continue
            if "s_down" in flags:
                self.note("sdown")
            if "o_down" in flags:
                self.note("odown")
        address, votes, _ = self.cluster.sentinel_master()
        if address is not None and address[1] != self.old_port and votes >= self.cluster.quorum:
            self.note("promoted")
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as response:
                health = json.loads(response.read())
        except OSError as exc:  # a 503 is an answer too
            body = getattr(exc, "read", lambda: b"{}")()
            health = json.loads(body or b"{}")
        except ValueError:
            return
        if health.get("redis_health", "healthy") != "healthy":
            self.note("health_down")


class _Load(threading.Thread):
    """The generator in a thread until ``stop``; :meth:`check` raises what stopped it early."""

    def __init__(self, step: Step, timeline: Timeline, stop: threading.Event) -> None:
        super().__init__(name="keygen-bench-load", daemon=True)
        self.step, self.timeline, self.stop = step, timeline, stop
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            run_step(self.step, self.timeline, self.stop)
        except BaseException as exc:  # handed to the thread that waits on it
            self.error = exc

    def check(self) -> bool:
        if self.error is not None:
            raise BenchError(f"the load stopped: {self.error}") from self.error
        return True


def _wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


def run_scenario(
    scenario: Scenario, topology: Topology, step: Step, say: Progress
) -> ScenarioResult:
    """Load at ``step``'s rate (until stopped), the fault, the recovery, the figures."""
    cluster, proxies, instances = topology.cluster, topology.proxies, topology.instances
    if cluster is None or proxies is None:
        raise BenchError("the failover table needs --topology redis")
    result = ScenarioResult(scenario.name, scenario.original)
    timeline, stop = Timeline(), threading.Event()
    # No spinning: the fault's steps and the observer share this process's GIL.
    load = _Load(replace(step, duration=None, precise=False), timeline, stop)
    started = time.monotonic()
    load.start()
    observer = _Observer(cluster, topology.target.url)
    try:
        _wait_for(
            lambda: load.check() and SOURCE_REDIS in timeline.sources[-50:],
            SETTLE_TIMEOUT,
            "the service to serve from redis_sentinel",
        )
        time.sleep(max(0.0, started + LEAD - time.monotonic()))  # steady load: measured
        fault_at = time.monotonic()
        observer.start()
        say(f"{scenario.name}: {scenario.fault.description}")
        window = FaultWindow(scenario.fault.name, time.time())
        act = Act(
            cluster,
            proxies,
            instances,
            PlannedFault(0.0, scenario.fault.name, scenario.hold),
            window,
        )
        try:
            scenario.fault.apply(act)
        except (ClusterError, OSError) as exc:
            result.error = str(exc).splitlines()[0]
        result.steps = window.steps

        def recovered() -> bool:
            left, back = shifts(
                timeline.times, timeline.sources, fault_at, observer.seen.get("promoted")
            )
            return load.check() and (left is None or back is not None)

        _wait_for(recovered, SETTLE_TIMEOUT, "the service to serve from redis_sentinel again")
        time.sleep(TAIL)  # steady load after the recovery: measured
    finally:
        stop.set()
        load.join()
        observer.halt.set()
        if observer.is_alive():
            observer.join()
    _figures(result, timeline, fault_at, observer.seen)
    return result


def _figures(
    result: ScenarioResult, timeline: Timeline, fault_at: float, seen: dict[str, float]
) -> None:
    times, sources = timeline.times, timeline.sources

    def after(event: float | None) -> float | None:
        return None if event is None else round(event - fault_at, 2)

    left, back = shifts(times, sources, fault_at, seen.get("promoted"))
    result.sdown, result.odown = after(seen.get("sdown")), after(seen.get("odown"))
    result.health_down, result.promoted = (
        after(seen.get("health_down")),
        after(seen.get("promoted")),
    )
    result.left, result.back = after(left), after(back)
    result.longest_gap = round(gaps(times, sources, fault_at), 3)
    during = [s for t, s in zip(times, sources, strict=True) if t >= fault_at]
    result.requests = len(during)
    result.failed = sum(1 for s in during if s is None)
    result.sources = Counter(s for s in during if s is not None)
