"""The running service: the ledger, the layers built on it, and what they report.

``Keygen.start(settings)`` builds the layers the settings call for; the HTTP layer only ever
talks to the ``Keygen`` object and, through it, to the allocator.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from keygen import __version__
from keygen.allocator import Allocator, Layer
from keygen.breaker import BreakerState, CircuitBreaker
from keygen.config import Settings
from keygen.constants import SOURCE_POSTGRESQL, SOURCE_REDIS
from keygen.dispensers.base import Dispenser
from keygen.dispensers.direct import DirectDispenser
from keygen.dispensers.lease import LeaseDispenser
from keygen.errors import KeygenError
from keygen.ledgers.base import Ledger
from keygen.ledgers.postgres import PostgresLedger
from keygen.ledgers.sqlite import SqliteLedger
from keygen.metrics import AllocationMetrics

HEALTHY = "healthy"
DEGRADED = "degraded"
UNHEALTHY = "unhealthy"
NOT_CONFIGURED = "not_configured"


async def open_ledger(settings: Settings, *, migrate: bool = True) -> Ledger:
    """The ledger the settings name: PostgreSQL with ``KEYGEN_DATABASE_URL``, else SQLite."""
    if settings.database_url is None:
        return await SqliteLedger.open(settings.data_dir)
    return await PostgresLedger.open(
        settings.database_url,
        pool_min_size=settings.db_pool_min_size,
        pool_max_size=settings.db_pool_max_size,
        connect_timeout=settings.db_connect_timeout,
        command_timeout=settings.db_command_timeout,
        migrate=migrate,
    )


@dataclass(frozen=True)
class LayerHealth:
    source: str
    health: str
    breaker: BreakerState
    latency_ms: float | None
    error: str | None


class Keygen:
    """The service: owns the ledger and the allocator, and answers health questions."""

    def __init__(self, settings: Settings, ledger: Ledger, allocator: Allocator) -> None:
        self.settings = settings
        self.ledger = ledger
        self.allocator = allocator
        self.metrics = allocator.metrics
        self.started_at = time.time()

    @classmethod
    async def start(cls, settings: Settings) -> Keygen:
        """Open the ledger and build the layers the settings ask for."""
        ledger = await open_ledger(settings)
        dispenser: Dispenser
        if isinstance(ledger, PostgresLedger) and settings.postgresql_mode == "direct":
            dispenser = DirectDispenser(ledger, holder=settings.instance_id)
        else:
            dispenser = LeaseDispenser(
                ledger, lease_size=settings.lease_size, holder=settings.instance_id
            )
        layers = [Layer(dispenser, cls._breaker(settings), settings.allocation_timeout)]
        allocator = Allocator(
            layers, timeout=settings.allocation_timeout, metrics=AllocationMetrics()
        )
        return cls(settings, ledger, allocator)

    @staticmethod
    def _breaker(settings: Settings) -> CircuitBreaker:
        return CircuitBreaker(
            failure_threshold=settings.breaker_failure_threshold,
            reset_timeout=settings.breaker_reset_timeout,
        )

    async def aclose(self) -> None:
        await self.allocator.aclose()
        await self.ledger.aclose()

    @property
    def active_locks(self) -> int:
        """Distributed locks this instance holds now (lease refills in Redis mode)."""
        return 0

    async def layer_health(self) -> list[LayerHealth]:
        """Ping every layer at once, each within ``KEYGEN_HEALTH_TIMEOUT``."""
        return list(await asyncio.gather(*(self._ping(layer) for layer in self.allocator.layers)))

    async def _ping(self, layer: Layer) -> LayerHealth:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.health_timeout):
                await layer.dispenser.ping()
        except (KeygenError, TimeoutError) as exc:
            error = str(exc) or "timed out"
            return LayerHealth(layer.source, UNHEALTHY, layer.breaker.state, None, error)
        latency = round(1000 * (time.perf_counter() - started), 3)
        return LayerHealth(layer.source, HEALTHY, layer.breaker.state, latency, None)

    async def health(self) -> dict[str, Any]:
        """The ``/health`` document: healthy when the first layer serves, degraded when only a
        later one does, unhealthy when none does."""
        layers = await self.layer_health()
        serving = [layer.health == HEALTHY for layer in layers]
        status = HEALTHY if serving[0] else DEGRADED if any(serving) else UNHEALTHY
        by_source = {layer.source: layer.health for layer in layers}
        document = {
            "status": status,
            "redis_health": by_source.get(SOURCE_REDIS, NOT_CONFIGURED),
            "postgresql_health": by_source.get(SOURCE_POSTGRESQL, NOT_CONFIGURED),
            "active_locks": self.active_locks,
            "metrics": self.metrics.snapshot(),
            "ledger": self.ledger.name,
            "layers": [
                {
                    "source": layer.source,
                    "health": layer.health,
                    "breaker": layer.breaker.value,
                    "latency_ms": layer.latency_ms,
                    "error": layer.error,
                }
                for layer in layers
            ],
            "instance_id": self.settings.instance_id,
            "version": __version__,
            "uptime_seconds": round(time.time() - self.started_at, 3),
        }
        if isinstance(self.ledger, PostgresLedger):
            document["postgresql"] = self.ledger.describe()
        return document

    def gauges(self) -> Iterable[Metric]:
        """The service's current state, for Prometheus."""
        yield GaugeMetricFamily(
            "keygen_active_locks", "Distributed locks held by this instance",
            value=self.active_locks,
        )
        breakers = GaugeMetricFamily(
            "keygen_breaker_open", "1 while a layer's circuit breaker is open or half-open",
            labels=["source"],
        )
        for layer in self.allocator.layers:
            is_open = layer.breaker.state is not BreakerState.CLOSED
            breakers.add_metric([layer.source], 1.0 if is_open else 0.0)
        yield breakers
