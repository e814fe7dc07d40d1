"""The service's health: each layer pinged, the Sentinels asked, the parts' snapshots joined.

``/health`` and ``/metrics`` read the most recent answer (the background probe's,
``probes.py``, every layer pinged within ``KEYGEN_HEALTH_TIMEOUT``), and ask again only when
that answer is older than ``KEYGEN_HEALTH_MAX_AGE``: however often they are read, the
backends are pinged at most that often. The ``metrics`` block counts every worker process of
the instance; the layer blocks (``reserve``, ``redis``, ``postgresql``) are the answering
worker's own.

Readiness (``/health/ready``) is stricter than "some layer answers": it fails, naming why,
whenever this worker cannot serve an allocation for a reason of its own: no layer (reserve
included) can allocate, API keys are required and no key table is in force (``auth.py``:
never read, or its lease ended), or the service is stopping. A load balancer then sends the
requests to an instance that can serve them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

from keygen import __version__
from keygen.allocator import Layer
from keygen.auth import KeyStore
from keygen.constants import SOURCE_POSTGRESQL, SOURCE_REDIS, SOURCE_RESERVE
from keygen.dispensers.redis import RedisDispenser
from keygen.dispensers.reserve import ReserveDispenser
from keygen.dispensers.sentinel_monitor import SentinelMonitor
from keygen.errors import KeygenError
from keygen.ledgers.base import Ledger
from keygen.ledgers.postgres import PostgresLedger
from keygen.metrics import Counters, InstanceView, instance_view
from keygen.metrics import publish as publish_state
from keygen.quotas import Quotas
from keygen.snapshots import (
    DEGRADED,
    HEALTHY,
    NOT_CONFIGURED,
    UNHEALTHY,
    Health,
    HealthSnapshot,
    LayerSnapshot,
    LayerStats,
    MetricsSnapshot,
    RedisSnapshot,
    SentinelSnapshot,
    WorkerState,
)

__all__ = ["HealthReporter", "concise", "overall_status", "ping"]

log = logging.getLogger(__name__)

#: An object's repr, innermost first: redis-py words a Sentinel's failure with the repr of
#: every client, connection pool and certificate path it holds.
_REPR = re.compile(r"<[^<>]*>")
#: The longest a layer's error is shown in /health and in the log.
MAX_ERROR = 300
#: What the TLS library says when the server refused the certificate this client showed.
_REFUSED_CERTIFICATE = ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN")


_SSL_REASON = re.compile(r"\[SSL: ([A-Z0-9_]+)\]")


def _tls(reason: str) -> str:
    if any(mark in reason.upper() for mark in _REFUSED_CERTIFICATE):
        return (
            f"TLS: the server refused this client's certificate ({reason}): "
            "KEYGEN_REDIS_SSL_CERTFILE is not one its CA signed"
        )
    return f"TLS: {reason}"


def concise(exc: BaseException) -> str:
    """A layer's failure in one short line: the TLS library's reason when a TLS error caused
    it (a refused client certificate named as such), else its message with every object's
    repr cut out, at most ``MAX_ERROR`` characters."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return _tls(str(seen.reason or seen.strerror or seen))
        seen = seen.__cause__ or seen.__context__
    text = " ".join(str(exc).split())
    # redis-py's Sentinel client words its clients' failures into its own message.
    if (named := _SSL_REASON.search(text)) is not None:
        return _tls(named.group(1))
    while _REPR.search(text):
        text = _REPR.sub("…", text)
    if len(text) > MAX_ERROR:
        text = text[:MAX_ERROR] + "…"
    return text or type(exc).__name__


async def ping(layer: Layer, timeout: float) -> LayerSnapshot:
    """Ping one layer within ``timeout``; whatever it raises, the answer is a snapshot."""
    started = time.perf_counter()
    breaker = layer.breaker.state.value  # as the ping leaves it
    try:
        async with asyncio.timeout(timeout):
            await layer.dispenser.ping()
    except TimeoutError:
        return LayerSnapshot(layer.source, UNHEALTHY, breaker, None, "timed out")
    except KeygenError as exc:
        return LayerSnapshot(layer.source, UNHEALTHY, breaker, None, concise(exc))
    except Exception as exc:
        # An untranslated driver error: the layer is unhealthy, /health still answers.
        log.exception("pinging layer %s failed unexpectedly", layer.source)
        error = f"{type(exc).__name__}: {concise(exc)}"
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
        counters: Counters,
        timeout: float,
        max_age: float,
        run_dir: Path | None = None,
        stale_after: float = 5.0,
        redis: RedisDispenser | None = None,
        sentinel_monitor: SentinelMonitor | None = None,
        reserve: ReserveDispenser | None = None,
        quotas: Quotas | None = None,
        auth: KeyStore | None = None,
    ) -> None:
        self.instance_id = instance_id
        self.auth = auth
        #: Set when the service begins to stop: not ready from then on.
        self.draining = False
        self.quotas = quotas
        self.layers = tuple(layers)
        self.ledger = ledger
        self.counters = counters
        self.timeout = timeout
        self.max_age = max_age
        self.run_dir = run_dir
        self.stale_after = stale_after
        #: The ledger's namespaces with the least headroom, as the probe last found them.
        self.headroom: dict[str, int] = {}
        #: Violations the background audit found in this worker's own grants.
        self.audit_violations = 0
        self.redis = redis
        self.sentinel_monitor = sentinel_monitor
        self.reserve = reserve
        self.started_at = time.time()
        self._last: _Answer | None = None
        self._asking: asyncio.Task[_Answer] | None = None

    def unready(self, snapshot: HealthSnapshot) -> list[str]:
        """Why this worker cannot serve allocations now (empty: it can), from ``snapshot``."""
        reasons = []
        if self.draining:
            reasons.append("draining: the service is stopping")
        auth = self.auth
        if auth is not None and auth.enforced and not auth.usable:
            reasons.append(f"keys_unavailable: {auth.unavailable()}")
        if snapshot.status == UNHEALTHY:
            # Sources only: readiness is open to anyone, a layer's error may name hosts.
            failing = ", ".join(layer.source for layer in snapshot.layers)
            reasons.append(f"no_layer: no layer can allocate ({failing or 'none configured'})")
        return reasons

    @property
    def active_locks(self) -> int:
        """Distributed locks this instance holds now (lease refills in Redis mode)."""
        return 0 if self.redis is None else self.redis.active_locks

    async def recent(self) -> HealthSnapshot:
        """The health as last asked, asked again only when older than ``max_age``; concurrent
        callers share one round of pings."""
        answer = self._last
        if answer is None or time.monotonic() - answer.at > self.max_age:
            if self._asking is None or self._asking.done():
                self._asking = asyncio.ensure_future(self.refresh())
            answer = await asyncio.shield(self._asking)
        return self._snapshot(answer)

    async def refresh(self) -> _Answer:
        """Ping every layer and ask the Sentinels, now. A layer whose breaker is open is
        closed by a ping it answers (no user request is ever a probe), and kept open by one
        it does not."""
        layers, sentinels = await asyncio.gather(
            asyncio.gather(*(ping(layer, self.timeout) for layer in self.layers)),
            self._sentinels(),
        )
        for layer, pinged in zip(self.layers, layers, strict=True):
            if pinged.health == HEALTHY:
                layer.breaker.probe_succeeded()
            else:
                layer.breaker.probe_failed()
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

    def worker_state(self, answer: _Answer | None = None) -> WorkerState:
        """This worker's state, as the instance's figures take it (``metrics/instance.py``)."""
        answer = answer or self._last or _Answer([], None, 0.0)
        return WorkerState(
            pid=self.counters.pid,
            at=time.time(),
            layers=self._layers(answer),
            stats=[_stats(layer) for layer in self.layers],
            active_locks=self.active_locks,
            redis=self._redis(answer.sentinels),
            reserve=self.reserve.snapshot() if self.reserve is not None else None,
            headroom=self.headroom,
            audit_violations=self.audit_violations,
        )

    def instance(self, *, publish: bool = False) -> InstanceView:
        """The whole instance now; with ``publish``, this worker's state is written for the
        others first."""
        own = self.worker_state()
        if publish:
            publish_state(self.run_dir, own)
        return instance_view(self.run_dir, self.counters, own, stale_after=self.stale_after)

    def _layers(self, answer: _Answer) -> list[LayerSnapshot]:
        # The breakers as they are now: the pings may be older.
        return [
            msgspec.structs.replace(pinged, breaker=layer.breaker.state.value)
            for pinged, layer in zip(answer.layers, self.layers, strict=False)
        ]

    def _snapshot(self, answer: _Answer) -> HealthSnapshot:
        layers = self._layers(answer)
        by_source = {layer.source: layer.health for layer in layers}
        redis_health = by_source.get(SOURCE_REDIS, NOT_CONFIGURED)
        if redis_health == HEALTHY and answer.sentinels and not answer.sentinels.sentinel_quorum:
            redis_health = DEGRADED  # serving, but could not fail over
        reserve = self.reserve
        view = self.instance()
        return HealthSnapshot(
            status=overall_status(layers, reserve_serving=reserve is not None and reserve.serving),
            redis_health=redis_health,
            postgresql_health=by_source.get(SOURCE_POSTGRESQL, NOT_CONFIGURED),
            active_locks=self.active_locks,
            metrics=self._metrics(view),
            ledger=self.ledger.name,
            layers=layers,
            instance_id=self.instance_id,
            version=__version__,
            uptime_seconds=round(time.time() - self.started_at, 3),
            workers=view.workers,
            postgresql=(
                self.ledger.snapshot() if isinstance(self.ledger, PostgresLedger) else None
            ),
            reserve=reserve.snapshot() if reserve is not None else None,
            redis=self._redis(answer.sentinels),
            rate_limits=self.quotas.snapshot() if self.quotas is not None else None,
        )

    def _metrics(self, view: InstanceView) -> MetricsSnapshot:
        metrics = view.metrics()
        if self.reserve is None:
            return metrics
        totals = view.layer_totals().get(SOURCE_RESERVE, {})
        return msgspec.structs.replace(
            metrics,
            reserve_allocations=metrics.allocations_by_source.get(SOURCE_RESERVE, 0),
            reserve_ids_wasted=int(totals.get("ids_wasted", 0)),
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


def _stats(layer: Layer) -> LayerStats:
    dispenser, breaker = layer.dispenser, layer.breaker
    return LayerStats(
        source=layer.source,
        breaker=breaker.state.value,
        opened=breaker.opened_count,
        closed=breaker.closed_count,
        refills=dispenser.refills,
        refill_buckets=list(dispenser.refill_seconds.counts),
        refill_seconds_sum=dispenser.refill_seconds.sum,
        ids_wasted=dispenser.ids_wasted,
    )
