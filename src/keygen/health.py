"""The service's health: each layer pinged, the Sentinels asked, the parts' snapshots joined.

``/health`` asks live (every layer pinged within ``KEYGEN_HEALTH_TIMEOUT``). ``/metrics`` is
scraped often and by machines, so it reads the most recent answer instead, and asks again
only when that answer is older than ``KEYGEN_HEALTH_MAX_AGE``: however often it is scraped,
the backends are pinged at most that often.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from keygen import __version__
from keygen.allocator import Layer
from keygen.constants import SOURCE_POSTGRESQL, SOURCE_REDIS, SOURCE_RESERVE
from keygen.dispensers.redis import RedisDispenser
from keygen.dispensers.reserve import ReserveDispenser
from keygen.dispensers.sentinel_monitor import SentinelMonitor
from keygen.errors import KeygenError
from keygen.ledgers.base import Ledger
from keygen.ledgers.postgres import PostgresLedger
from keygen.metrics import AllocationMetrics
from keygen.snapshots import (
    DEGRADED,
    HEALTHY,
    NOT_CONFIGURED,
    UNHEALTHY,
    Health,
    HealthSnapshot,
    LayerSnapshot,
    MetricsSnapshot,
    RedisSnapshot,
    SentinelSnapshot,
)

__all__ = ["HealthReporter", "overall_status", "ping"]

log = logging.getLogger(__name__)


async def ping(layer: Layer, timeout: float) -> LayerSnapshot:
    """Ping one layer within ``timeout``; whatever it raises, the answer is a snapshot."""
    started = time.perf_counter()
    breaker = layer.breaker.state.value  # as the ping leaves it
    try:
        async with asyncio.timeout(timeout):
            await layer.dispenser.ping()
    except (KeygenError, TimeoutError) as exc:
        return LayerSnapshot(layer.source, UNHEALTHY, breaker, None, str(exc) or "timed out")
    except Exception as exc:
        # An untranslated driver error: the layer is unhealthy, /health still answers.
        log.exception("pinging layer %s failed unexpectedly", layer.source)
        error = f"{type(exc).__name__}: {exc}"
        return LayerSnapshot(layer.source, UNHEALTHY, breaker, None, error)
    latency = round(1000 * (time.perf_counter() - started), 3)
    return LayerSnapshot(layer.source, HEALTHY, breaker, latency, None)


def overall_status(layers: Sequence[LayerSnapshot], *, reserve_serving: bool) -> Health:
    """Healthy when the first layer serves, degraded when only a later one does (or requests
    still end up on the reserve), unhealthy when none does."""
    serving = [layer.health == HEALTHY for layer in layers]
    if not any(serving):
        return UNHEALTHY
    if not serving[0] or reserve_serving:
        return DEGRADED
    return HEALTHY


@dataclass
class _Answer:
    layers: list[LayerSnapshot]
    sentinels: SentinelSnapshot | None
    at: float


class HealthReporter:
    """Answers health questions about the parts the service was built from."""

    def __init__(
        self,
        *,
        instance_id: str,
        layers: Sequence[Layer],
        ledger: Ledger,
        metrics: AllocationMetrics,
        timeout: float,
        max_age: float,
        redis: RedisDispenser | None = None,
        sentinel_monitor: SentinelMonitor | None = None,
        reserve: ReserveDispenser | None = None,
    ) -> None:
        self.instance_id = instance_id
        self.layers = tuple(layers)
        self.ledger = ledger
        self.metrics = metrics
        self.timeout = timeout
        self.max_age = max_age
        self.redis = redis
        self.sentinel_monitor = sentinel_monitor
        self.reserve = reserve
        self.started_at = time.time()
        self._last: _Answer | None = None
        self._asking: asyncio.Task[_Answer] | None = None

    @property
    def active_locks(self) -> int:
        """Distributed locks this instance holds now (lease refills in Redis mode)."""
        return 0 if self.redis is None else self.redis.active_locks

    async def live(self) -> HealthSnapshot:
        """Ping every layer and ask the Sentinels now, all at once and within the timeout:
        ``/health`` answers promptly when Redis is down, which is when it is read most."""
        return self._snapshot(await self._ask())

    async def recent(self) -> HealthSnapshot:
        """The health as last asked, asked again only when older than ``max_age``; concurrent
        callers share one round of pings."""
        answer = self._last
        if answer is None or time.monotonic() - answer.at > self.max_age:
            if self._asking is None or self._asking.done():
                self._asking = asyncio.ensure_future(self._ask())
            answer = await asyncio.shield(self._asking)
        return self._snapshot(answer)

    async def _ask(self) -> _Answer:
        layers, sentinels = await asyncio.gather(
            asyncio.gather(*(ping(layer, self.timeout) for layer in self.layers)),
            self._sentinels(),
        )
        self._last = _Answer(list(layers), sentinels, time.monotonic())
        return self._last

    async def _sentinels(self) -> SentinelSnapshot | None:
        monitor = self.sentinel_monitor
        if monitor is None:
            return None
        try:
            async with asyncio.timeout(self.timeout):
                return await monitor.snapshot()
        except TimeoutError:
            return monitor.unreachable()

    def _snapshot(self, answer: _Answer) -> HealthSnapshot:
        # The breakers as they are now: the pings may be older.
        layers = [
            msgspec.structs.replace(pinged, breaker=layer.breaker.state.value)
            for pinged, layer in zip(answer.layers, self.layers, strict=True)
        ]
        by_source = {layer.source: layer.health for layer in layers}
        redis_health = by_source.get(SOURCE_REDIS, NOT_CONFIGURED)
        if redis_health == HEALTHY and answer.sentinels and not answer.sentinels.sentinel_quorum:
            redis_health = DEGRADED  # serving, but could not fail over
        reserve = self.reserve
        return HealthSnapshot(
            status=overall_status(layers, reserve_serving=reserve is not None and reserve.serving),
            redis_health=redis_health,
            postgresql_health=by_source.get(SOURCE_POSTGRESQL, NOT_CONFIGURED),
            active_locks=self.active_locks,
            metrics=self._metrics(),
            ledger=self.ledger.name,
            layers=layers,
            instance_id=self.instance_id,
            version=__version__,
            uptime_seconds=round(time.time() - self.started_at, 3),
            postgresql=(
                self.ledger.snapshot() if isinstance(self.ledger, PostgresLedger) else None
            ),
            reserve=reserve.snapshot() if reserve is not None else None,
            redis=self._redis(answer.sentinels),
        )

    def _metrics(self) -> MetricsSnapshot:
        metrics = self.metrics.snapshot()
        if self.reserve is None:
            return metrics
        return msgspec.structs.replace(
            metrics,
            reserve_allocations=self.metrics.by_source.get(SOURCE_RESERVE, 0),
            reserve_ids_wasted=self.reserve.ids_wasted,
        )

    def _redis(self, sentinels: SentinelSnapshot | None) -> RedisSnapshot | None:
        if self.redis is None or sentinels is None:
            return None
        return RedisSnapshot(
            master=sentinels.master,
            sentinel_quorum=sentinels.sentinel_quorum,
            failovers=sentinels.failovers,
            last_failover_at=sentinels.last_failover_at,
            lease_refills=self.redis.refills,
            ids_wasted=self.redis.ids_wasted,
        )
