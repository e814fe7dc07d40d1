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
    "HealthSnapshot",
    "LayerSnapshot",
    "MetricsDocument",
    "MetricsSnapshot",
    "PostgresSnapshot",
    "RedisSnapshot",
    "ReserveNamespaceSnapshot",
    "ReserveSnapshot",
    "SentinelSnapshot",
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
    postgresql: PostgresSnapshot | None = None
    reserve: ReserveSnapshot | None = None
    redis: RedisSnapshot | None = None


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
