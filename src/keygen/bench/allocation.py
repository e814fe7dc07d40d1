"""The *Allocation performance* table: every target at each listed rate, then stepping up
until each one saturates.

Targets take turns at each rate (keygen, bare, keygen, bare...): on a shared machine the
noise moves by the minute, and two servers measured minutes apart would not see the same
machine. A target that saturated stops climbing; the others go on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace

from keygen.bench.generator import Step
from keygen.bench.parallel import measure
from keygen.bench.stats import StepResult, climb, saturated
from keygen.bench.targets import Target

__all__ = ["DEFAULT_RATES", "Plan", "run_allocation"]

DEFAULT_RATES = (100.0, 500.0, 1000.0, 2000.0)

#: Told of each step as it starts: (what, target, offered rate, seconds).
OnStep = Callable[[str, str, float, float], None]


@dataclass(frozen=True)
class Plan:
    """The steps: the listed rates, whether to climb past them, seconds per step, and a
    warm-up per target first (not counted: the first leases, the first connections)."""

    rates: Sequence[float] = DEFAULT_RATES
    saturate: bool = True
    duration: float = 5.0
    warmup: float = 1.0


def run_allocation(
    targets: Sequence[Target],
    plan: Plan,
    template: Step,
    pool: ProcessPoolExecutor | None,
    on_step: OnStep,
) -> list[StepResult]:
    """Every step's result, in the order they ran."""
    results: list[StepResult] = []

    def one(target: Target, rate: float, duration: float, what: str) -> StepResult:
        on_step(what, target.name, rate, duration)
        step = replace(template, url=target.url, target=target.name, rate=rate, duration=duration)
        return measure(step, pool)

    if plan.warmup > 0:
        for target in targets:
            one(target, plan.rates[0], plan.warmup, "warm-up")
    for rate in plan.rates:
        for target in targets:
            results.append(one(target, rate, plan.duration, "step"))
    if not plan.saturate:
        return results
    climbing = [t for t in targets if not any(saturated(r) for r in results if r.target == t.name)]
    for rate in climb(max(plan.rates)):
        for target in list(climbing):
            result = one(target, rate, plan.duration, "saturation")
            results.append(result)
            if saturated(result):
                climbing.remove(target)
        if not climbing:
            break
    return results
