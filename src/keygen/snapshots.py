"""What the service reports about itself, as typed snapshots.

Each part of the service (a layer, the emergency reserve, the Sentinel monitor, the ledger,
the allocation counters) reports its state as one of these structs; ``/health``, ``/metrics``
(JSON and Prometheus) and ``keygen chaos``'s report render or read the same structs, so a
field is named in one place. Encoded with msgspec, a snapshot is the ``/health`` JSON itself:
fields appear in the order written here, and the optional parts are left out when absent.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

__all__ = [
    "DEGRADED",
    "HEALTHY",
    "NOT_CONFIGURED",
    "UNHEALTHY",
    "AlertSnapshot",
    "AlertsDocument",
    "HealthSnapshot",
    "HistoryDocument",
    "LayerSnapshot",
    "LayerStats",
    "LedgerDocument",
    "MetricsDocument",
    "MetricsSnapshot",
    "NamespaceSnapshot",
    "PostgresSnapshot",
    "RedisSnapshot",
    "ReserveNamespaceSnapshot",
    "ReserveSnapshot",
    "SentinelSnapshot",
    "WorkerState",
]

HEALTHY: Final = "healthy"
DEGRADED: Final = "degraded"
UNHEALTHY: Final = "unhealthy"
NOT_CONFIGURED: Final = "not_configured"

#: The service's or a layer's health.
Health = Literal["healthy", "degraded", "unhealthy", "not_configured"]


class LayerSnapshot(msgspec.Struct, frozen=True):
    """One layer as its last ping found it."""

    source: str
    health: Health
    breaker: str
    latency_ms: float | None
    error: str | None


class MetricsSnapshot(msgspec.Struct, frozen=True, omit_defaults=True):
    """The allocation counters of this process; the reserve's two only with a reserve."""

    total_allocations: int
    redis_allocations: int
    postgresql_allocations: int
    failed_allocations: int
    allocations_by_source: dict[str, int]
    ids_allocated: int
    avg_allocation_time_ms: float
    p95_allocation_time_ms: float
    reserve_allocations: int | None = None
    reserve_ids_wasted: int | None = None


class ReserveNamespaceSnapshot(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One namespace's emergency reserve; the range fields only while one is held."""

    held: bool
    start: int | None = None
    end: int | None = None
    remaining: int | None = None
    used: int | None = None
    journaled_mark: int | None = None
    ids_per_minute: float
    #: At the namespace's current rate; None while nothing is served or none is held.
    minutes_left: float | None


class ReserveSnapshot(msgspec.Struct, frozen=True):
    """The emergency reserve of this process."""

    serving: bool
    size: int
    journal: str
    journal_error: str | None
    holder: str
    ids_served: int
    ids_wasted: int
    reserves_taken: int
    usages_recorded: int
    pending_usage_records: int
    last_error: str | None
    last_error_at: float | None
    namespaces: dict[str, ReserveNamespaceSnapshot]


class SentinelSnapshot(msgspec.Struct, frozen=True):
    """What the Sentinels say: the master's address, whether they could fail over."""

    master: str | None
    sentinel_quorum: bool
    failovers: int
    last_failover_at: float | None


class RedisSnapshot(msgspec.Struct, frozen=True):
    """The Redis layer: the Sentinels' view and the dispenser's lease counters."""

    master: str | None
    sentinel_quorum: bool
    failovers: int
    last_failover_at: float | None
    lease_refills: int
    ids_wasted: int


class PostgresSnapshot(msgspec.Struct, frozen=True):
    """The PostgreSQL ledger's connection state (its URL without credentials)."""

    url: str
    connected: bool
    pool_size: int
    pool_idle: int
    pool_max_size: int
    schema_version: int | None
    ping_ms: float | None
    last_error: str | None
    last_error_at: float | None


class RateLimitSnapshot(msgspec.Struct, frozen=True):
    """How this worker enforces rate limits (``keygen/quotas.py``)."""

    #: ``shared``: counts exchanged through Redis; ``per_process``: this process's own.
    mode: Literal["shared", "per_process"]
    #: Why not shared (no Redis configured, Redis unreachable), when not.
    reason: str | None
    namespace_rules: int
    #: Keys with limits that requests have been checked against.
    keys_limited: int
    #: Requests this worker refused with a 429.
    refused: int


class HealthSnapshot(msgspec.Struct, frozen=True, omit_defaults=True):
    """The ``/health`` document: the original product's fields, then Keygen's own."""

    status: Health
    redis_health: Health
    postgresql_health: Health
    active_locks: int
    metrics: MetricsSnapshot
    ledger: str
    layers: list[LayerSnapshot]
    instance_id: str
    version: str
    uptime_seconds: float
    #: Worker processes of the instance alive now; ``metrics`` counts them all.
    workers: int
    postgresql: PostgresSnapshot | None = None
    reserve: ReserveSnapshot | None = None
    redis: RedisSnapshot | None = None
    rate_limits: RateLimitSnapshot | None = None


class MetricsDocument(msgspec.Struct, frozen=True):
    """``GET /metrics`` as JSON: the original product's shape."""

    overall_health: Health
    redis_health: Health
    postgresql_health: Health
    active_locks: int
    metrics: MetricsSnapshot

    @classmethod
    def of(cls, health: HealthSnapshot) -> MetricsDocument:
        return cls(
            health.status,
            health.redis_health,
            health.postgresql_health,
            health.active_locks,
            health.metrics,
        )


class LayerStats(msgspec.Struct, frozen=True):
    """One layer's counters in one worker process."""

    source: str
    breaker: str
    opened: int  # breaker transitions to open
    closed: int  # and back to closed
    refills: int
    refill_buckets: list[int]  # per bucket of histogram.REFILL_BUCKETS, the last above all
    refill_seconds_sum: float
    ids_wasted: int


class WorkerState(msgspec.Struct, frozen=True):
    """What one worker process publishes at each probe, for the instance's figures."""

    pid: int
    at: float  # unix time
    layers: list[LayerSnapshot]
    stats: list[LayerStats]
    active_locks: int
    redis: RedisSnapshot | None
    reserve: ReserveSnapshot | None
    #: IDs left below 2**63-1, for the namespaces of the ledger with the least.
    headroom: dict[str, int]
    #: What the background audit of this worker's own grants found wrong (never anything).
    audit_violations: int = 0


class HistoryDocument(msgspec.Struct, frozen=True):
    """``GET /metrics/history``: columns of figures, oldest first (docs/monitoring.md)."""

    window_seconds: int
    step_seconds: int
    series: dict[str, list[float | None]]


AlertState = Literal["inactive", "pending", "firing"]


class AlertSnapshot(msgspec.Struct, frozen=True):
    """One alert rule (for one set of labels) as last evaluated."""

    name: str
    severity: str
    state: AlertState
    since: float | None  # when it became pending or firing
    value: float | None
    threshold: float
    labels: dict[str, str]
    summary: str
    runbook: str


class AlertsDocument(msgspec.Struct, frozen=True):
    """``GET /alerts``."""

    evaluated_at: float | None
    alerts: list[AlertSnapshot]


class NamespaceSnapshot(msgspec.Struct, frozen=True):
    """One namespace of the ledger."""

    namespace: str
    next_id: int
    headroom: int
    grants: int


class LedgerDocument(msgspec.Struct, frozen=True):
    """``GET /ledger``: the namespaces, the least headroom first."""

    ledger: str
    namespaces: list[NamespaceSnapshot]
