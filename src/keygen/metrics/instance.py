"""The instance's figures: every worker's counters and published states, added up.

Counters that requests move (allocations, latency, responses, refusals) are exact: they are
read from the workers' shared-memory files (``counters.py``). The rest (layer health,
breakers, the reserve, refills, IDs wasted) each worker publishes as a ``WorkerState`` at
every probe, in ``state-<pid>.json`` of the run directory. A state also stays when its worker
exits, so its counters still count; its gauges (health, reserve, locks) count only while the
worker is alive and its state fresh.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from keygen.constants import SOURCE_POSTGRESQL, SOURCE_REDIS
from keygen.histogram import REFILL_BUCKETS
from keygen.metrics.counters import Counters, InstanceCounters, is_alive, read_instance
from keygen.snapshots import MetricsSnapshot, WorkerState

__all__ = ["InstanceView", "ReserveFigures", "instance_view", "publish"]

_STATE_PREFIX = "state-"
_decode_state = msgspec.json.Decoder(WorkerState).decode
_encode = msgspec.json.Encoder().encode


def publish(run_dir: Path | None, state: WorkerState) -> None:
    """Write this worker's state for the others to read (atomically: write, then rename)."""
    if run_dir is None:
        return
    path = run_dir / f"{_STATE_PREFIX}{state.pid}.json"
    partial = path.with_suffix(".tmp")
    partial.write_bytes(_encode(state))
    os.replace(partial, path)


def _states(run_dir: Path | None, own_pid: int) -> Iterable[WorkerState]:
    if run_dir is None:
        return
    for path in sorted(run_dir.glob(f"{_STATE_PREFIX}*.json")):
        if path.name == f"{_STATE_PREFIX}{own_pid}.json":
            continue
        with contextlib.suppress(OSError, msgspec.DecodeError):
            yield _decode_state(path.read_bytes())


@dataclass(frozen=True)
class ReserveFigures:
    """A namespace's emergency reserves across the instance."""

    remaining: int
    ids_per_minute: float

    @property
    def seconds_left(self) -> float | None:
        return 60 * self.remaining / self.ids_per_minute if self.ids_per_minute > 0 else None


@dataclass(frozen=True)
class InstanceView:
    """The whole instance, as one scrape, one history sample or one alert evaluation sees it."""

    counters: InstanceCounters
    own: WorkerState
    live: list[WorkerState]  # this worker's state first
    states: list[WorkerState]  # every worker's, gone ones included

    @property
    def workers(self) -> int:
        return len(self.live)

    # -- allocations -----------------------------------------------------------------------

    def metrics(self) -> MetricsSnapshot:
        """The ``metrics`` block of ``/health`` and ``/metrics``, for the whole instance."""
        c = self.counters
        by_source = c.by_source
        total = sum(by_source.values())
        requests = total + c.failed
        recent = sorted(c.recent)
        p95 = recent[min(len(recent) - 1, int(0.95 * len(recent)))] if recent else 0.0
        return MetricsSnapshot(
            total_allocations=total,
            redis_allocations=by_source.get(SOURCE_REDIS, 0),
            postgresql_allocations=by_source.get(SOURCE_POSTGRESQL, 0),
            failed_allocations=c.failed,
            allocations_by_source=dict(sorted(by_source.items())),
            ids_allocated=c.ids_allocated,
            avg_allocation_time_ms=round(1000 * c.latency_sum / requests, 3) if requests else 0.0,
            p95_allocation_time_ms=round(1000 * p95, 3),
        )

    # -- layers ----------------------------------------------------------------------------

    def layer_up(self) -> dict[str, bool]:
        """Per layer: did this worker's last probe find it answering? (Every worker probes
        the same backends; the freshest answer is this one's.)"""
        return {layer.source: layer.health == "healthy" for layer in self.own.layers}

    def breaker_open(self) -> dict[str, int]:
        """Per layer: how many live workers have its breaker open or half-open."""
        counts = {layer.source: 0 for layer in self.own.layers}
        for state in self.live:
            for layer in state.stats:
                counts[layer.source] = counts.get(layer.source, 0) + (layer.breaker != "closed")
        return counts

    def layer_totals(self) -> dict[str, dict[str, float]]:
        """Per layer, the counters every worker ever published, added up."""
        totals: dict[str, dict[str, float]] = {}
        for state in self.states:
            for layer in state.stats:
                entry = totals.setdefault(
                    layer.source,
                    {
                        "opened": 0,
                        "closed": 0,
                        "refills": 0,
                        "refill_seconds_sum": 0.0,
                        "ids_wasted": 0,
                    },
                )
                entry["opened"] += layer.opened
                entry["closed"] += layer.closed
                entry["refills"] += layer.refills
                entry["refill_seconds_sum"] += layer.refill_seconds_sum
                entry["ids_wasted"] += layer.ids_wasted
        return totals

    def refill_buckets(self) -> dict[str, list[int]]:
        buckets: dict[str, list[int]] = {}
        for state in self.states:
            for layer in state.stats:
                mine = buckets.setdefault(layer.source, [0] * (len(REFILL_BUCKETS) + 1))
                for i, count in enumerate(layer.refill_buckets):
                    mine[i] += count
        return buckets

    # -- Redis, reserve, ledger ------------------------------------------------------------

    def failovers(self) -> int | None:
        """Failovers Sentinel announced (each worker counts the same ones: the most seen)."""
        seen = [state.redis.failovers for state in self.states if state.redis is not None]
        return max(seen) if seen else None

    def sentinel_quorum(self) -> bool | None:
        return self.own.redis.sentinel_quorum if self.own.redis is not None else None

    def active_locks(self) -> int:
        return sum(state.active_locks for state in self.live)

    def reserve_serving(self) -> bool | None:
        reserves = [state.reserve for state in self.live if state.reserve is not None]
        return any(r.serving for r in reserves) if reserves else None

    def reserve(self) -> dict[str, ReserveFigures]:
        """Per namespace: IDs left in every live worker's reserve, and their rate."""
        remaining: dict[str, int] = {}
        rate: dict[str, float] = {}
        for state in self.live:
            if state.reserve is None:
                continue
            for namespace, entry in state.reserve.namespaces.items():
                remaining[namespace] = remaining.get(namespace, 0) + (entry.remaining or 0)
                rate[namespace] = rate.get(namespace, 0.0) + entry.ids_per_minute
        return {ns: ReserveFigures(remaining[ns], rate[ns]) for ns in sorted(remaining)}

    def reserve_totals(self) -> tuple[int, int] | None:
        """(IDs served from the reserve, reserves taken), every worker's added up."""
        reserves = [state.reserve for state in self.states if state.reserve is not None]
        if not reserves:
            return None
        return sum(r.ids_served for r in reserves), sum(r.reserves_taken for r in reserves)

    def audit_violations(self) -> int:
        """What every worker's background audit found wrong, ever (never anything)."""
        return sum(state.audit_violations for state in self.states)

    def headroom(self) -> dict[str, int]:
        """The namespaces with the least headroom, as the freshest worker's probe saw them."""
        return self.own.headroom


def instance_view(
    run_dir: Path | None, own_counters: Counters, own: WorkerState, *, stale_after: float
) -> InstanceView:
    """The instance as it is now: ``own`` is this worker's fresh state; other workers'
    states older than ``stale_after`` seconds (or whose process is gone) count as gone."""
    states = [own, *_states(run_dir, own.pid)]
    now = time.time()
    live = [own] + [s for s in states[1:] if now - s.at <= stale_after and is_alive(s.pid)]
    return InstanceView(read_instance(run_dir, own_counters), own, live, states)
