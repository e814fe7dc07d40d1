"""Above what one generator process can send: the schedule split between processes, started
once for a run, and their results merged (histograms add up).

Process ``k`` of ``P`` sends requests ``k, k + P, k + 2P...`` of the one schedule, from a
``t0`` shared through ``time.monotonic()`` (one clock for every process of a machine).
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

from keygen.bench.generator import Step, run_step
from keygen.bench.stats import StepResult

__all__ = ["PER_PROCESS_RATE", "measure", "processes_for", "warm"]

#: Requests a second one generator process is given at most (one held 15,000 a second
#: against the bare app on the 2-core development machine, the server sharing its cores).
PER_PROCESS_RATE = 12_000.0


def processes_for(rate: float) -> int:
    """How many generator processes a rate needs: one per ``PER_PROCESS_RATE``, at most one
    per core."""
    return max(1, min(os.cpu_count() or 1, math.ceil(rate / PER_PROCESS_RATE)))


def _ready(seconds: float) -> int:
    time.sleep(seconds)  # long enough that the pool starts another process for the next
    return os.getpid()


def warm(pool: ProcessPoolExecutor, processes: int) -> None:
    """Start ``processes`` of the pool's processes now: a process spawned during a step
    would be late for its share of the schedule."""
    for future in [pool.submit(_ready, 0.3) for _ in range(processes)]:
        future.result()


def measure(step: Step, pool: ProcessPoolExecutor | None = None) -> StepResult:
    """Run ``step``: in this process when one is enough, else split over ``pool``'s
    processes (created by the caller, so that they start once for a whole run)."""
    parts = processes_for(step.rate) if pool is not None else 1
    if parts == 1:
        return run_step(step)
    assert pool is not None
    # Far enough ahead for every process to open its connections before request 0 is due.
    t0 = time.monotonic() + 0.5
    futures = [
        pool.submit(run_step, replace(step, t0=t0, part=k, parts=parts)) for k in range(parts)
    ]
    return StepResult.merged([future.result() for future in futures])
