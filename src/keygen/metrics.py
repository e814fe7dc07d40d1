"""Allocation counters, kept cheap on the hot path and rendered only when read.

Recording a request is a few integer additions and one slot of a ring buffer; averages,
percentiles and the Prometheus exposition are computed when ``/health`` or ``/metrics`` is
read. Counters are per process: with ``--workers N`` each worker reports its own.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from keygen.constants import SOURCE_POSTGRESQL, SOURCE_REDIS
from keygen.snapshots import HealthSnapshot, MetricsSnapshot, ReserveSnapshot

#: Upper bounds (seconds) of the latency histogram exposed to Prometheus.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

#: How many recent requests the percentiles are computed over.
RECENT_SAMPLES = 4096


class AllocationMetrics:
    """Counts allocations by outcome and source, and their latency."""

    def __init__(self) -> None:
        self.total_allocations = 0
        self.failed_allocations = 0
        self.ids_allocated = 0
        self.by_source: dict[str, int] = {}
        self.latency_sum = 0.0
        self.bucket_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self._recent = [0.0] * RECENT_SAMPLES
        self._recent_count = 0

    def record_success(self, source: str, size: int, seconds: float) -> None:
        self.total_allocations += 1
        self.ids_allocated += size
        self.by_source[source] = self.by_source.get(source, 0) + 1
        self._record_latency(seconds)

    def record_failure(self, seconds: float) -> None:
        self.failed_allocations += 1
        self._record_latency(seconds)

    def _record_latency(self, seconds: float) -> None:
        self.latency_sum += seconds
        self.bucket_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self._recent[self._recent_count % RECENT_SAMPLES] = seconds
        self._recent_count += 1

    @property
    def requests(self) -> int:
        return self.total_allocations + self.failed_allocations

    def average_ms(self) -> float:
        return 1000 * self.latency_sum / self.requests if self.requests else 0.0

    def percentile_ms(self, fraction: float) -> float:
        """The given percentile of the most recent requests' latency, in milliseconds."""
        samples = sorted(self._recent[: min(self._recent_count, RECENT_SAMPLES)])
        if not samples:
            return 0.0
        return 1000 * samples[min(len(samples) - 1, int(fraction * len(samples)))]

    def snapshot(self) -> MetricsSnapshot:
        return MetricsSnapshot(
            total_allocations=self.total_allocations,
            redis_allocations=self.by_source.get(SOURCE_REDIS, 0),
            postgresql_allocations=self.by_source.get(SOURCE_POSTGRESQL, 0),
            failed_allocations=self.failed_allocations,
            allocations_by_source=dict(sorted(self.by_source.items())),
            ids_allocated=self.ids_allocated,
            avg_allocation_time_ms=round(self.average_ms(), 3),
            p95_allocation_time_ms=round(self.percentile_ms(0.95), 3),
        )


class KeygenCollector(Collector):
    """Renders a health snapshot and the allocation counters in Prometheus's terms."""

    def __init__(self, health: HealthSnapshot, metrics: AllocationMetrics) -> None:
        self._health = health
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from _allocation_metrics(self._metrics)
        health = self._health
        yield GaugeMetricFamily(
            "keygen_active_locks",
            "Distributed locks held by this instance",
            value=health.active_locks,
        )
        breakers = GaugeMetricFamily(
            "keygen_breaker_open",
            "1 while a layer's circuit breaker is open or half-open",
            labels=["source"],
        )
        for layer in health.layers:
            breakers.add_metric([layer.source], 0.0 if layer.breaker == "closed" else 1.0)
        yield breakers
        if health.redis is not None:
            yield CounterMetricFamily(
                "keygen_redis_failovers",
                "Redis master failovers announced by Sentinel",
                value=health.redis.failovers,
            )
        if health.reserve is not None:
            yield from _reserve_metrics(health.reserve)


def registry_of(health: HealthSnapshot, metrics: AllocationMetrics) -> CollectorRegistry:
    """A registry that exposes ``health`` and ``metrics``, for one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(KeygenCollector(health, metrics))
    return registry


def _allocation_metrics(m: AllocationMetrics) -> Iterator[Metric]:
    requests = CounterMetricFamily(
        "keygen_allocations",
        "Allocation requests by outcome and source",
        labels=["outcome", "source"],
    )
    for source, count in sorted(m.by_source.items()):
        requests.add_metric(["success", source], count)
    requests.add_metric(["failure", ""], m.failed_allocations)
    yield requests
    yield CounterMetricFamily("keygen_ids_allocated", "IDs handed out", value=m.ids_allocated)
    cumulative, buckets = 0, []
    for bound, count in zip((*LATENCY_BUCKETS, float("inf")), m.bucket_counts, strict=True):
        cumulative += count
        buckets.append((_bound_label(bound), cumulative))
    yield HistogramMetricFamily(
        "keygen_allocation_duration_seconds",
        "Time to serve POST /allocate",
        buckets=buckets,
        sum_value=m.latency_sum,
    )


def _reserve_metrics(reserve: ReserveSnapshot) -> Iterator[Metric]:
    remaining = GaugeMetricFamily(
        "keygen_reserve_remaining_ids",
        "IDs left in this process's emergency reserve",
        labels=["namespace"],
    )
    minutes = GaugeMetricFamily(
        "keygen_reserve_minutes_left",
        "Minutes the emergency reserve lasts at the namespace's current allocation rate",
        labels=["namespace"],
    )
    for namespace, entry in reserve.namespaces.items():
        remaining.add_metric([namespace], entry.remaining or 0)
        if entry.minutes_left is not None:
            minutes.add_metric([namespace], entry.minutes_left)
    yield remaining
    yield minutes
    yield GaugeMetricFamily(
        "keygen_reserve_serving",
        "1 while requests are served from the emergency reserve",
        value=1.0 if reserve.serving else 0.0,
    )
    yield CounterMetricFamily(
        "keygen_reserve_ids_wasted",
        "Reserve IDs retired or abandoned unused: never handed out, never to be",
        value=reserve.ids_wasted,
    )
    yield CounterMetricFamily(
        "keygen_reserve_ids_served",
        "IDs served from the emergency reserve",
        value=reserve.ids_served,
    )
    yield CounterMetricFamily(
        "keygen_reserve_refills",
        "Emergency reserves taken from the ledger",
        value=reserve.reserves_taken,
    )


def _bound_label(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
