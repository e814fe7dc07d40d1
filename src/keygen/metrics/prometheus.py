"""The instance's figures in Prometheus's terms (docs/monitoring.md lists every metric).

Names follow Prometheus's conventions: base units (seconds, bytes), ``_total`` on counters,
and only labels whose values come from fixed, short lists (sources, endpoints, statuses,
error codes; namespaces only for the few with the least reserve or headroom).
"""

from __future__ import annotations

import platform
from collections.abc import Iterator, Sequence

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from keygen import __version__
from keygen.histogram import REFILL_BUCKETS
from keygen.metrics.instance import InstanceView
from keygen.metrics.layout import LATENCY_BUCKETS
from keygen.metrics.process import process_figures

__all__ = ["KeygenCollector", "registry_of"]

#: How many namespaces the headroom gauge names (those with the least).
HEADROOM_NAMESPACES = 10


def registry_of(view: InstanceView) -> CollectorRegistry:
    """A registry that exposes ``view``, for one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(KeygenCollector(view))
    return registry


class KeygenCollector(Collector):
    """Renders one ``InstanceView``."""

    def __init__(self, view: InstanceView) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        view = self._view
        info = GaugeMetricFamily(
            "keygen_build_info", "Always 1: the version running", labels=["version", "python"]
        )
        info.add_metric([__version__, platform.python_version()], 1)
        yield info
        yield GaugeMetricFamily(
            "keygen_workers", "Worker processes of the instance alive", value=view.workers
        )
        yield from _allocations(view)
        yield from _http(view)
        yield from _layers(view)
        yield from _redis(view)
        yield from _reserve(view)
        headroom = GaugeMetricFamily(
            "keygen_ledger_headroom_ids",
            "IDs left below 2^63-1, for the namespaces with the least",
            labels=["namespace"],
        )
        for namespace, left in sorted(view.headroom().items(), key=lambda item: item[1])[
            :HEADROOM_NAMESPACES
        ]:
            headroom.add_metric([namespace], left)
        yield headroom
        yield CounterMetricFamily(
            "keygen_audit_violations",
            "What the background audit of the ledger's trail found wrong: must stay 0",
            value=view.audit_violations(),
        )
        yield from _process(view)


def _allocations(view: InstanceView) -> Iterator[Metric]:
    c = view.counters
    requests = CounterMetricFamily(
        "keygen_allocations",
        "Allocation requests by outcome and source",
        labels=["outcome", "source"],
    )
    for source, count in sorted(c.by_source.items()):
        requests.add_metric(["success", source], count)
    requests.add_metric(["failure", ""], c.failed)
    yield requests
    yield CounterMetricFamily("keygen_ids_allocated", "IDs handed out", value=c.ids_allocated)
    yield _histogram(
        "keygen_allocation_duration_seconds",
        "Time to serve POST /allocate",
        LATENCY_BUCKETS,
        c.bucket_counts,
        c.latency_sum,
    )


def _http(view: InstanceView) -> Iterator[Metric]:
    responses = CounterMetricFamily(
        "keygen_http_responses",
        "HTTP responses by endpoint and status",
        labels=["endpoint", "status"],
    )
    for (endpoint, status), count in view.counters.responses().items():
        responses.add_metric([endpoint, status], count)
    yield responses
    rejected = CounterMetricFamily(
        "keygen_rejected_requests",
        "Requests refused with an error, by the error's code",
        labels=["code"],
    )
    for code, count in view.counters.rejected().items():
        rejected.add_metric([code], count)
    yield rejected


def _layers(view: InstanceView) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "keygen_layer_up",
        "1 when the layer answered its last background probe",
        labels=["source"],
    )
    for source, answered in view.layer_up().items():
        up.add_metric([source], 1.0 if answered else 0.0)
    yield up
    breakers = GaugeMetricFamily(
        "keygen_breaker_open",
        "Worker processes whose breaker for the layer is open or half-open",
        labels=["source"],
    )
    for source, count in view.breaker_open().items():
        breakers.add_metric([source], count)
    yield breakers
    totals = view.layer_totals()
    transitions = CounterMetricFamily(
        "keygen_breaker_transitions", "Circuit breaker state changes", labels=["source", "to"]
    )
    refills = CounterMetricFamily(
        "keygen_lease_refills", "Leases taken from the ledger", labels=["source"]
    )
    wasted = CounterMetricFamily(
        "keygen_ids_wasted",
        "IDs given up unused: never handed out, never to be",
        labels=["source"],
    )
    for source, entry in totals.items():
        transitions.add_metric([source, "open"], entry["opened"])
        transitions.add_metric([source, "closed"], entry["closed"])
        refills.add_metric([source], entry["refills"])
        wasted.add_metric([source], entry["ids_wasted"])
    yield transitions
    yield refills
    yield wasted
    durations = HistogramMetricFamily(
        "keygen_lease_refill_duration_seconds", "Time a lease refill took", labels=["source"]
    )
    for source, counts in view.refill_buckets().items():
        durations.add_metric(
            [source], _cumulative(REFILL_BUCKETS, counts), totals[source]["refill_seconds_sum"]
        )
    yield durations


def _redis(view: InstanceView) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "keygen_active_locks",
        "Distributed locks held by this instance",
        value=view.active_locks(),
    )
    failovers = view.failovers()
    if failovers is not None:
        yield CounterMetricFamily(
            "keygen_redis_failovers",
            "Redis master failovers announced by Sentinel",
            value=failovers,
        )
    quorum = view.sentinel_quorum()
    if quorum is not None:
        yield GaugeMetricFamily(
            "keygen_redis_sentinel_quorum",
            "1 while the Sentinels could fail the master over",
            value=1.0 if quorum else 0.0,
        )


def _reserve(view: InstanceView) -> Iterator[Metric]:
    serving = view.reserve_serving()
    if serving is None:
        return
    remaining = GaugeMetricFamily(
        "keygen_reserve_remaining_ids",
        "IDs left in the emergency reserves",
        labels=["namespace"],
    )
    seconds = GaugeMetricFamily(
        "keygen_reserve_remaining_seconds",
        "Seconds the emergency reserve lasts at the namespace's current rate",
        labels=["namespace"],
    )
    for namespace, figures in view.reserve().items():
        remaining.add_metric([namespace], figures.remaining)
        if figures.seconds_left is not None:
            seconds.add_metric([namespace], figures.seconds_left)
    yield remaining
    yield seconds
    yield GaugeMetricFamily(
        "keygen_reserve_serving",
        "1 while requests are served from the emergency reserve",
        value=1.0 if serving else 0.0,
    )
    totals = view.reserve_totals()
    if totals is not None:
        served, taken = totals
        yield CounterMetricFamily(
            "keygen_reserve_ids_served", "IDs served from the emergency reserve", value=served
        )
        yield CounterMetricFamily(
            "keygen_reserve_refills", "Emergency reserves taken from the ledger", value=taken
        )


def _process(view: InstanceView) -> Iterator[Metric]:
    figures = process_figures(state.pid for state in view.live)
    yield CounterMetricFamily(
        "process_cpu_seconds",
        "CPU time of the instance's worker processes",
        value=figures.cpu_seconds,
    )
    yield GaugeMetricFamily(
        "process_resident_memory_bytes",
        "Resident memory of the instance's worker processes",
        value=figures.resident_bytes,
    )
    yield GaugeMetricFamily(
        "process_open_fds",
        "Open file descriptors of the instance's worker processes",
        value=figures.open_fds,
    )


def _cumulative(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    total = 0
    buckets: list[tuple[str, float]] = []
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        total += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
    return buckets


def _histogram(
    name: str, doc: str, bounds: Sequence[float], counts: Sequence[int], total: float
) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=_cumulative(bounds, counts), sum_value=total)
