"""The running service: the ledger and the layers built on it from the settings.

``Keygen.start(settings)`` builds the layers the settings call for; the HTTP layer only ever
talks to the ``Keygen`` object: to its allocator, and to its health reporter.
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from keygen.alerts import Alerts
from keygen.allocator import Allocator, Layer
from keygen.audit import Auditor
from keygen.auth import ENFORCED_MARKER, KeyStore
from keygen.auth_tokens import load_secret
from keygen.breaker import CircuitBreaker
from keygen.config import Settings
from keygen.constants import MAX_ID
from keygen.dispensers import lease
from keygen.dispensers import redis_functions as fn
from keygen.dispensers.base import Dispenser
from keygen.dispensers.direct import DirectDispenser
from keygen.dispensers.lease import LedgerLeases
from keygen.dispensers.redis import RedisDispenser
from keygen.dispensers.reserve import ReserveDispenser
from keygen.dispensers.segments import SegmentDispenser
from keygen.dispensers.sentinel import master_of, sentinels_of
from keygen.dispensers.sentinel_monitor import SentinelMonitor
from keygen.errors import KeygenError, LayerUnavailable
from keygen.health import HealthReporter, concise
from keygen.history import History
from keygen.ledgers import ledger_location, open_ledger
from keygen.ledgers.base import Ledger
from keygen.ledgers.postgres import PostgresLedger
from keygen.metrics import Counters
from keygen.probes import Probes
from keygen.quotas import Quotas, UsageMeter

log = logging.getLogger(__name__)

#: The reserve's breaker never opens: trying it costs a dictionary lookup, and when it refuses
#: (exhausted), that refusal is what the 503 should say.
RESERVE_BREAKER_THRESHOLD = 2**62


async def _reserve_layer(settings: Settings, ledger: Ledger) -> ReserveDispenser:
    """The emergency reserve, on the first free journal slot of the data dir."""
    return await ReserveDispenser.open(
        ledger,
        data_dir=settings.data_dir,
        slots=settings.reserve_slots,
        size=settings.reserve_size,
        namespaces=settings.reserve_namespace_list,
        instance_id=settings.instance_id,
        location=ledger_location(settings),
        witness_dir=settings.reserve_witness_dir,
    )


async def _redis_layer(
    settings: Settings, ledger: Ledger
) -> tuple[RedisDispenser, SentinelMonitor]:
    """The Redis dispenser on the master the Sentinels name, and the monitor of the Sentinels.

    Nothing here waits for Redis: a Redis that is down at start-up is a layer that fails (and
    falls back) until it comes up.
    """
    sentinel = sentinels_of(settings)
    dispenser = RedisDispenser(
        master_of(settings, sentinel),
        ledger,
        holder=settings.instance_id,
        lease_size=settings.redis_lease_size,
        min_lease_size=settings.redis_min_lease_size,
        max_lease_size=settings.redis_max_lease_size,
        lock_timeout=settings.lock_timeout,
    )
    try:
        async with asyncio.timeout(settings.redis_timeout):
            await _ensure_functions(dispenser)
    except (KeygenError, TimeoutError) as exc:
        log.warning(
            "Redis is not reachable at start-up (%s); falling back until it is",
            concise(exc) if isinstance(exc, KeygenError) else "timed out",
        )
    monitor = SentinelMonitor(
        sentinel, settings.redis_sentinel_master_name, timeout=settings.health_timeout
    )
    monitor.start()
    return dispenser, monitor


async def _ensure_functions(dispenser: RedisDispenser) -> None:
    """Load the function library unless the master holds this very library already.

    Where Redis has ACLs, the service's user may not load functions (``docs/security.md``):
    an admin installs them, and the service only reads them (FUNCTION LIST), so that the
    service's password cannot replace what every instance runs.
    """
    try:
        libraries = await dispenser.redis.function_list(library=fn.LIBRARY_NAME, withcode=True)
    except RedisError as exc:
        raise LayerUnavailable(f"Redis: listing functions: {exc}") from exc
    for library in libraries:
        fields = dict(zip(library[::2], library[1::2], strict=False))
        code = fields.get(b"library_code", fields.get("library_code"))
        if isinstance(code, bytes):
            code = code.decode()
        if code == fn.LIBRARY:
            return
    await dispenser.load_functions()


async def _key_store(settings: Settings, ledger: Ledger) -> KeyStore:
    """The API keys, read once (a key created before start-up is checked from the first
    request) and then refreshed in the background."""
    if settings.auth == "off":
        return KeyStore(None, b"", "off")
    store = KeyStore(
        ledger,
        load_secret(settings),
        settings.auth,
        refresh_interval=settings.auth_refresh_interval,
        lease_seconds=settings.auth_lease_seconds,
        marker=settings.data_dir / ENFORCED_MARKER,
    )
    await store.refresh_logged()
    store.start()
    return store


def _quotas(settings: Settings) -> Quotas:
    """The rate limits' counters: shared through the Redis master when Sentinels are
    configured (a client of its own: the exchange never queues behind allocations)."""
    redis = master_of(settings, sentinels_of(settings)) if settings.sentinels else None
    quotas = Quotas(
        settings.namespace_rules,
        redis=redis,
        sync_interval=settings.rate_limit_sync_interval,
        timeout=settings.redis_socket_timeout,
    )
    quotas.start()
    return quotas


class Keygen:
    """The service: owns the ledger, the allocator and the health reporter."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        allocator: Allocator,
        *,
        redis: RedisDispenser | None = None,
        sentinel_monitor: SentinelMonitor | None = None,
        reserve: ReserveDispenser | None = None,
        auth: KeyStore | None = None,
        quotas: Quotas | None = None,
    ) -> None:
        self.settings = settings
        #: The API keys requests are checked against (none required when not given).
        self.auth = auth if auth is not None else KeyStore(None, b"", "off")
        self.quotas = quotas if quotas is not None else Quotas(settings.namespace_rules)
        #: What each key allocated, for the ledger's usage table.
        self.usage = UsageMeter(ledger)
        self.ledger = ledger
        self.allocator = allocator
        self.redis = redis
        self.sentinel_monitor = sentinel_monitor
        self.reserve = reserve
        self.counters = allocator.metrics
        self.health = HealthReporter(
            instance_id=settings.instance_id,
            layers=allocator.layers,
            ledger=ledger,
            counters=self.counters,
            timeout=settings.health_timeout,
            max_age=settings.health_max_age,
            run_dir=settings.run_dir,
            stale_after=max(5.0, 3 * settings.probe_interval),
            redis=redis,
            sentinel_monitor=sentinel_monitor,
            reserve=reserve,
            quotas=self.quotas,
            auth=self.auth,
        )
        self.history = History(settings.data_dir)
        self.probes = Probes(
            self.health,
            interval=settings.probe_interval,
            run_dir=settings.run_dir,
            history=self.history,
            alerts=Alerts(
                instance_id=settings.instance_id,
                webhook_url=settings.alert_webhook_url,
                scale=settings.alert_time_scale,
            ),
            auditor=Auditor(ledger, holder_prefix=settings.instance_id),
        )

    @classmethod
    async def start(cls, settings: Settings) -> Keygen:
        """Open the ledger and build the layers the settings ask for: Redis first when
        Sentinels are configured, then the ledger's own layer, then the emergency reserve.

        Raises:
            JournalLocked: the reserve is on and every journal slot is locked.
        """
        ledger = await open_ledger(settings)
        try:
            auth = await _key_store(settings, ledger)
        except BaseException:
            await ledger.aclose()
            raise
        reserve = None
        layers = []
        redis = monitor = None
        try:
            # First: a process that may not hold a reserve should not start anything else.
            if settings.reserve_enabled:
                reserve = await _reserve_layer(settings, ledger)
            if settings.sentinels:
                redis, monitor = await _redis_layer(settings, ledger)
                served: Dispenser = redis
                if settings.redis_segment_seconds > 0:
                    served = SegmentDispenser(
                        redis,
                        target_seconds=settings.redis_segment_seconds,
                        min_length=settings.redis_segment_min_size,
                        max_length=settings.redis_segment_max_size,
                        max_namespaces=settings.max_namespaces,
                    )
                layers.append(Layer(served, cls._breaker(settings), settings.redis_timeout))
        except BaseException:
            if reserve is not None:
                await reserve.aclose()
            await auth.aclose()
            await ledger.aclose()
            raise
        dispenser: Dispenser
        if isinstance(ledger, PostgresLedger) and settings.postgresql_mode == "direct":
            dispenser = DirectDispenser(ledger, holder=settings.instance_id)
        else:
            dispenser = SegmentDispenser(
                LedgerLeases(ledger, holder=settings.instance_id),
                target_seconds=settings.lease_seconds,
                min_length=settings.lease_size,
                max_length=min(MAX_ID, settings.lease_size * lease.LEASE_GROWTH),
                max_namespaces=settings.max_namespaces,
            )
        layers.append(Layer(dispenser, cls._breaker(settings), settings.allocation_timeout))
        if reserve is not None:
            # Its share of the budget is kept from the layers before it: a hanging ledger
            # cannot leave the last resort no time to answer.
            budget = settings.reserve_budget
            breaker = CircuitBreaker(failure_threshold=RESERVE_BREAKER_THRESHOLD)
            layers.append(Layer(reserve, breaker, budget, guaranteed=budget))
        allocator = Allocator(
            layers,
            timeout=settings.allocation_timeout,
            metrics=Counters(settings.run_dir),
            stall_timeout=settings.stall_timeout,
            on_allocated=reserve.observe if reserve is not None else None,
        )
        service = cls(
            settings,
            ledger,
            allocator,
            redis=redis,
            sentinel_monitor=monitor,
            reserve=reserve,
            auth=auth,
            quotas=_quotas(settings),
        )
        if auth.mode != "off":
            service.usage.start()
        service.probes.start()
        allocator.start()
        return service

    @staticmethod
    def _breaker(settings: Settings) -> CircuitBreaker:
        return CircuitBreaker(
            failure_threshold=settings.breaker_failure_threshold,
            reset_timeout=settings.breaker_reset_timeout,
        )

    async def aclose(self) -> None:
        self.health.draining = True  # readiness fails from the first step of stopping
        await self.probes.aclose()
        if self.sentinel_monitor is not None:
            await self.sentinel_monitor.aclose()
        await self.allocator.aclose()
        await self.quotas.aclose()
        await self.usage.aclose()
        await self.auth.aclose()
        await self.ledger.aclose()
        self.counters.close()
