"""The nemesis: the plan of faults, and applying it one fault window at a time.

The fault kinds and their steps are in ``faults.py``. The plan (kinds, holds, targets, modes)
is drawn from a seeded RNG before the run; ``all`` is the single kinds, ``overlapping`` the
pairs (two at once).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence

from keygen.chaos.faults import (
    FAULT_KINDS,
    FAULTS,
    KNOWN_KINDS,
    Act,
    FaultWindow,
    PlannedFault,
    every_link,
)
from keygen.chaos.instances import ServiceInstance
from keygen.chaos.proxy import Mode, ProxyServer
from keygen.cluster import LocalCluster
from keygen.errors import ClusterError

__all__ = ["Nemesis", "plan_random", "plan_short"]

MIN_GAP = 3.0


def plan_short(
    kinds: Sequence[str] = FAULT_KINDS,
    *,
    seed: int = 0,
    warmup: float = 5.0,
    hold: float = 4.0,
    gap: float = 3.0,
) -> list[PlannedFault]:
    """Every kind once, in the given order, one after another (the CI schedule)."""
    rng = random.Random(seed)
    plan, at = [], warmup
    for kind in kinds:
        plan.append(_planned(rng, kind, at, hold))
        at += hold + gap
    return plan


def plan_random(
    kinds: Sequence[str],
    duration: float,
    *,
    seed: int,
    warmup: float = 5.0,
    holds: tuple[float, float] = (2.0, 12.0),
    gaps: tuple[float, float] = (3.0, 15.0),
) -> list[PlannedFault]:
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
    if kind not in FAULTS:
        raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(KNOWN_KINDS)}")
    return PlannedFault(
        at=round(at, 3),
        kind=kind,
        hold=round(hold, 3),
        target=rng.randrange(1000),
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

    def __init__(
        self,
        cluster: LocalCluster,
        proxies: ProxyServer,
        instances: Sequence[ServiceInstance],
        say: Callable[[str], None],
        *,
        min_gap: float = MIN_GAP,
    ) -> None:
        self.cluster = cluster
        self.proxies = proxies
        self.instances = list(instances)
        self.say = say
        self.min_gap = min_gap
        self.windows: list[FaultWindow] = []
        self.current: FaultWindow | None = None

    async def run(self, plan: Sequence[PlannedFault], started: float, stop: asyncio.Event) -> None:
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
        kind = FAULTS[fault.kind]
        window = FaultWindow(fault.kind, time.time(), all_layers_down=kind.all_layers_down)
        self.current = window
        self.windows.append(window)
        act = Act(self.cluster, self.proxies, self.instances, fault, window)
        try:
            await asyncio.to_thread(kind.apply, act)
        except Exception as exc:  # noted in the report (and failing the run), never fatal
            window.error = f"{type(exc).__name__}: {exc}"
            self.say(f"[red]{fault.kind} failed: {window.error[:300]}[/red]")
            await asyncio.to_thread(self.heal)
        finally:
            window.end = time.time()
            self.current = None
        self.say(f"{fault.kind} over in {window.end - window.start:.1f}s: {window.detail}")
        return window

    def heal(self) -> None:
        """Undo whatever a failed fault left behind: proxies passing, every process running
        and unpaused."""
        self.proxies.set_mode(every_link(self.cluster), Mode.PASS)
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
