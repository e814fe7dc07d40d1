"""The running service: the ledger, the layers built on it, and what they report.

``Keygen.start(settings)`` builds the layers the settings call for; the HTTP layer only ever
talks to the ``Keygen`` object and, through it, to the allocator.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from keygen import __version__
from keygen.allocator import Allocator, Layer
from keygen.breaker import BreakerState, CircuitBreaker
from keygen.config import Settings
from keygen.constants import SOURCE_POSTGRESQL, SOURCE_REDIS, SOURCE_RESERVE
from keygen.dispensers.base import Dispenser
from keygen.dispensers.direct import DirectDispenser
from keygen.dispensers.lease import LeaseDispenser
from keygen.dispensers.redis import RedisDispenser
from keygen.dispensers.reserve import ReserveDispenser
from keygen.dispensers.sentinel_address_map import MappedSentinel
from keygen.dispensers.sentinel_monitor import SentinelMonitor
from keygen.errors import KeygenError
from keygen.ledgers.base import Ledger
from keygen.ledgers.postgres import PostgresLedger
from keygen.ledgers.sqlite import LEDGER_FILENAME, SqliteLedger
from keygen.metrics import AllocationMetrics

log = logging.getLogger(__name__)

HEALTHY = "healthy"
DEGRADED = "degraded"
UNHEALTHY = "unhealthy"
NOT_CONFIGURED = "not_configured"

#: The reserve's breaker never opens: trying it costs a dictionary lookup, and when it refuses
#: (exhausted), that refusal is what the 503 should say.
RESERVE_BREAKER_THRESHOLD = 2**62


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


def ledger_location(settings: Settings) -> str:
    """Where the ledger lives, without credentials: the reserve journal records it, and never
    serves a reserve that another ledger granted."""
    if settings.database_url is None:
        return f"sqlite:{(settings.data_dir / LEDGER_FILENAME).resolve()}"
    parts = urlsplit(settings.database_url)
    try:
        port = parts.port or 5432
    except ValueError:
        port = 5432
    return f"postgresql://{parts.hostname or ''}:{port}{parts.path or '/'}"


async def _reserve_layer(settings: Settings, ledger: Ledger) -> ReserveDispenser:
    """The emergency reserve, on the first free journal slot of the data dir."""
    return await ReserveDispenser.open(
        ledger, data_dir=settings.data_dir, slots=settings.reserve_slots,
        size=settings.reserve_size, namespaces=settings.reserve_namespace_list,
        instance_id=settings.instance_id, location=ledger_location(settings),
    )


def sentinels_of(settings: Settings) -> MappedSentinel:
    """The Sentinels, asked with the socket timeouts and without redis-py's retries: it would
    try a Sentinel that is down 10 more times, with backoffs of up to 1 s, before asking the
    next one, and the layer's time budget would be spent long before."""
    timeout = settings.redis_socket_timeout
    # A Sentinel that sees fewer peers than the quorum needs may be partitioned off: its
    # idea of the master is not trusted.
    return MappedSentinel(
        settings.sentinels, min_other_sentinels=settings.redis_sentinel_quorum - 1,
        sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout,
                         "retry": Retry(NoBackoff(), 0)},
        address_map=settings.redis_addresses,
    )


async def _redis_layer(
    settings: Settings, ledger: Ledger
) -> tuple[RedisDispenser, SentinelMonitor]:
    """The Redis dispenser on the master the Sentinels name, and the monitor of the Sentinels.

    Nothing here waits for Redis: a Redis that is down at start-up is a layer that fails (and
    falls back) until it comes up.
    """
    timeout = settings.redis_socket_timeout
    sentinel = sentinels_of(settings)
    # No retries inside redis-py: a failed call falls back to the next layer at once, and the
    # breaker decides when to try Redis again.
    master = sentinel.master_for(
        settings.redis_sentinel_master_name, decode_responses=True,
        retry=Retry(NoBackoff(), 0), socket_timeout=timeout, socket_connect_timeout=timeout,
    )
    dispenser = RedisDispenser(
        master, ledger, holder=settings.instance_id, lease_size=settings.redis_lease_size,
        min_lease_size=settings.redis_min_lease_size,
        max_lease_size=settings.redis_max_lease_size, lock_timeout=settings.lock_timeout,
    )
    try:
        async with asyncio.timeout(settings.redis_timeout):
            await dispenser.load_functions()
    except (KeygenError, TimeoutError) as exc:
        log.warning("Redis is not reachable at start-up (%s); falling back until it is", exc)
    monitor = SentinelMonitor(
        sentinel, settings.redis_sentinel_master_name, timeout=settings.health_timeout
    )
    monitor.start()
    return dispenser, monitor


@dataclass(frozen=True)
class LayerHealth:
    source: str
    health: str
    breaker: BreakerState
    latency_ms: float | None
    error: str | None


class Keygen:
    """The service: owns the ledger and the allocator, and answers health questions."""

    def __init__(
        self, settings: Settings, ledger: Ledger, allocator: Allocator, *,
        redis: RedisDispenser | None = None, sentinel_monitor: SentinelMonitor | None = None,
        reserve: ReserveDispenser | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.allocator = allocator
        self.redis = redis
        self.sentinel_monitor = sentinel_monitor
        self.reserve = reserve
        self.metrics = allocator.metrics
        self.started_at = time.time()

    @classmethod
    async def start(cls, settings: Settings) -> Keygen:
        """Open the ledger and build the layers the settings ask for: Redis first when
        Sentinels are configured, then the ledger's own layer, then the emergency reserve.

        Raises:
            JournalLocked: the reserve is on and every journal slot is locked.
        """
        ledger = await open_ledger(settings)
        reserve = None
        layers = []
        redis = monitor = None
        try:
            # First: a process that may not hold a reserve should not start anything else.
            if settings.reserve_enabled:
                reserve = await _reserve_layer(settings, ledger)
            if settings.sentinels:
                redis, monitor = await _redis_layer(settings, ledger)
                layers.append(Layer(redis, cls._breaker(settings), settings.redis_timeout))
        except BaseException:
            if reserve is not None:
                await reserve.aclose()
            await ledger.aclose()
            raise
        dispenser: Dispenser
        if isinstance(ledger, PostgresLedger) and settings.postgresql_mode == "direct":
            dispenser = DirectDispenser(ledger, holder=settings.instance_id)
        else:
            dispenser = LeaseDispenser(
                ledger, lease_size=settings.lease_size, holder=settings.instance_id
            )
        layers.append(Layer(dispenser, cls._breaker(settings), settings.allocation_timeout))
        if reserve is not None:
            # Its share of the budget is kept from the layers before it: a hanging ledger
            # cannot leave the last resort no time to answer.
            budget = settings.reserve_budget
            breaker = CircuitBreaker(failure_threshold=RESERVE_BREAKER_THRESHOLD)
            layers.append(Layer(reserve, breaker, budget, guaranteed=budget))
        allocator = Allocator(
            layers, timeout=settings.allocation_timeout, metrics=AllocationMetrics(),
            on_allocated=reserve.observe if reserve is not None else None,
        )
        return cls(
            settings, ledger, allocator, redis=redis, sentinel_monitor=monitor, reserve=reserve
        )

    @staticmethod
    def _breaker(settings: Settings) -> CircuitBreaker:
        return CircuitBreaker(
            failure_threshold=settings.breaker_failure_threshold,
            reset_timeout=settings.breaker_reset_timeout,
        )

    async def aclose(self) -> None:
        if self.sentinel_monitor is not None:
            await self.sentinel_monitor.aclose()
        await self.allocator.aclose()
        await self.ledger.aclose()

    @property
    def active_locks(self) -> int:
        """Distributed locks this instance holds now (lease refills in Redis mode)."""
        return 0 if self.redis is None else self.redis.active_locks

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
        except Exception as exc:
            # An untranslated driver error: the layer is unhealthy, /health still answers.
            log.exception("pinging layer %s failed unexpectedly", layer.source)
            error = f"{type(exc).__name__}: {exc}"
            return LayerHealth(layer.source, UNHEALTHY, layer.breaker.state, None, error)
        latency = round(1000 * (time.perf_counter() - started), 3)
        return LayerHealth(layer.source, HEALTHY, layer.breaker.state, latency, None)

    async def health(self) -> dict[str, Any]:
        """The ``/health`` document: healthy when the first layer serves, degraded when only a
        later one does, unhealthy when none does.

        The Sentinels are asked at the same time as the layers are pinged, and within the same
        timeout: /health answers promptly when Redis is down, which is when it is read most.
        """
        layers, sentinels = await asyncio.gather(self.layer_health(), self._sentinels())
        serving = [layer.health == HEALTHY for layer in layers]
        status = HEALTHY if serving[0] else DEGRADED if any(serving) else UNHEALTHY
        if status == HEALTHY and self.reserve is not None and self.reserve.serving:
            status = DEGRADED  # the layers answer pings, but requests still end up last
        by_source = {layer.source: layer.health for layer in layers}
        metrics = self.metrics.snapshot()
        document = {
            "status": status,
            "redis_health": by_source.get(SOURCE_REDIS, NOT_CONFIGURED),
            "postgresql_health": by_source.get(SOURCE_POSTGRESQL, NOT_CONFIGURED),
            "active_locks": self.active_locks,
            "metrics": metrics,
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
        if self.reserve is not None:
            document["reserve"] = self.reserve.describe()
            metrics["reserve_allocations"] = self.metrics.by_source.get(SOURCE_RESERVE, 0)
            metrics["reserve_ids_wasted"] = self.reserve.ids_wasted
        if self.redis is not None and sentinels is not None:
            if document["redis_health"] == HEALTHY and not sentinels["sentinel_quorum"]:
                document["redis_health"] = DEGRADED  # serving, but could not fail over
            document["redis"] = {
                **sentinels,
                "lease_refills": self.redis.refills,
                "ids_wasted": self.redis.ids_wasted,
            }
        return document

    async def _sentinels(self) -> dict[str, Any] | None:
        """What the Sentinels say, within ``KEYGEN_HEALTH_TIMEOUT``; None without Redis."""
        monitor = self.sentinel_monitor
        if monitor is None:
            return None
        try:
            async with asyncio.timeout(self.settings.health_timeout):
                return await monitor.describe()
        except TimeoutError:
            return {"master": None, "sentinel_quorum": False, "failovers": monitor.failovers,
                    "last_failover_at": monitor.last_failover_at}

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
        if self.sentinel_monitor is not None:
            yield CounterMetricFamily(
                "keygen_redis_failovers", "Redis master failovers announced by Sentinel",
                value=self.sentinel_monitor.failovers,
            )
        if self.reserve is not None:
            yield from self._reserve_gauges(self.reserve)

    @staticmethod
    def _reserve_gauges(reserve: ReserveDispenser) -> Iterable[Metric]:
        described = reserve.describe()
        remaining = GaugeMetricFamily(
            "keygen_reserve_remaining_ids", "IDs left in this process's emergency reserve",
            labels=["namespace"],
        )
        minutes = GaugeMetricFamily(
            "keygen_reserve_minutes_left",
            "Minutes the emergency reserve lasts at the namespace's current allocation rate",
            labels=["namespace"],
        )
        for namespace, entry in described["namespaces"].items():
            remaining.add_metric([namespace], entry.get("remaining", 0))
            if entry["minutes_left"] is not None:
                minutes.add_metric([namespace], entry["minutes_left"])
        yield remaining
        yield minutes
        yield GaugeMetricFamily(
            "keygen_reserve_serving", "1 while requests are served from the emergency reserve",
            value=1.0 if described["serving"] else 0.0,
        )
        yield CounterMetricFamily(
            "keygen_reserve_ids_wasted",
            "Reserve IDs retired or abandoned unused: never handed out, never to be",
            value=described["ids_wasted"],
        )
        yield CounterMetricFamily(
            "keygen_reserve_ids_served", "IDs served from the emergency reserve",
            value=described["ids_served"],
        )
        yield CounterMetricFamily(
            "keygen_reserve_refills", "Emergency reserves taken from the ledger",
            value=described["reserves_taken"],
        )
