"""Settings, read once from the environment (and a ``.env`` file) into one typed object.

The original product's names are kept where they exist (``ID_BLOCK_SIZE``,
``REDIS_SENTINEL_HOSTS``, ...); everything else is ``KEYGEN_*``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from keygen.constants import MAX_ID, NAMESPACE_PATTERN

DEFAULT_BLOCK_SIZE = 1000
DEFAULT_MAX_BLOCK_SIZE = 1_000_000
DEFAULT_LEASE_SIZE = 1_000_000
DEFAULT_ALLOCATION_TIMEOUT = 30.0
DEFAULT_LOCK_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 10.0
DEFAULT_MAX_BODY_BYTES = 4096
DEFAULT_REDIS_LEASE_SIZE = 1_000_000
DEFAULT_REDIS_MIN_LEASE_SIZE = 1_000_000
DEFAULT_REDIS_MAX_LEASE_SIZE = 10_000_000_000  # ~10 min at 17k req/s of 1000 IDs
#: Lease lengths stay far below 2**53 so the Redis function's Lua arithmetic is exact.
MAX_REDIS_LEASE = 2**50
DEFAULT_DB_POOL_MIN_SIZE = 1
DEFAULT_DB_POOL_MAX_SIZE = 10
DEFAULT_DB_CONNECT_TIMEOUT = 5.0
DEFAULT_DB_COMMAND_TIMEOUT = 5.0
#: One worker's peak is ~18k req/s of 1000 IDs (benchmarks/README.md), 1.1e9 IDs a minute:
#: 5e9 IDs last 4.6 minutes at that peak, 83 minutes at 1k req/s. docs/reserve.md has more.
DEFAULT_RESERVE_SIZE = 5_000_000_000
DEFAULT_RESERVE_NAMESPACES = "default"
DEFAULT_RESERVE_SLOTS = 64
DEFAULT_RESERVE_TIMEOUT = 0.5

#: A host and a port, as ``REDIS_SENTINEL_HOSTS`` and ``KEYGEN_REDIS_ADDRESS_MAP`` name them.
Address = tuple[str, int]

#: How the ``postgresql`` layer serves: a grant per batch of concurrent requests, or leases.
PostgresqlMode = Literal["direct", "lease"]

#: Whether the emergency reserve layer runs: "auto" = with Redis Sentinels and PostgreSQL.
ReserveMode = Literal["auto", "on", "off"]
LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]


def _seed_name(name: str) -> AliasChoices:
    """Read a setting from its unprefixed name, as the original product documents it."""
    return AliasChoices(name)


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="KEYGEN_", env_file=".env", extra="ignore", frozen=True
    )

    # The original product's names.
    id_block_size: Annotated[int, Field(ge=1, le=MAX_ID)] = Field(
        DEFAULT_BLOCK_SIZE,
        validation_alias=_seed_name("ID_BLOCK_SIZE"),
        description="Size of a request that names none.",
    )
    allocation_timeout: Annotated[float, Field(gt=0)] = Field(
        DEFAULT_ALLOCATION_TIMEOUT,
        validation_alias=_seed_name("ALLOCATION_TIMEOUT"),
        description="Seconds a request may take across all layers before it gets a 503.",
    )
    lock_timeout: Annotated[float, Field(gt=0)] = Field(
        DEFAULT_LOCK_TIMEOUT,
        validation_alias=_seed_name("LOCK_TIMEOUT"),
        description="Seconds a lease-refill lock is held at most.",
    )
    redis_sentinel_hosts: str | None = Field(
        None,
        validation_alias=_seed_name("REDIS_SENTINEL_HOSTS"),
        description="host:port,host:port of the Sentinels; unset means no Redis layer.",
    )
    redis_sentinel_master_name: str = Field(
        "mymaster", validation_alias=_seed_name("REDIS_SENTINEL_MASTER_NAME")
    )
    redis_sentinel_quorum: Annotated[int, Field(ge=1)] = Field(
        2, validation_alias=_seed_name("REDIS_SENTINEL_QUORUM")
    )
    redis_timeout: Annotated[float, Field(gt=0)] = Field(
        1.0,
        description="Seconds one request may spend on the Redis layer before falling back.",
    )
    redis_socket_timeout: Annotated[float, Field(gt=0)] = Field(
        0.5,
        description="Seconds a Redis or Sentinel command (or connect) may take.",
    )
    redis_lease_size: Annotated[int, Field(ge=1, le=MAX_REDIS_LEASE)] = Field(
        DEFAULT_REDIS_LEASE_SIZE,
        description="Length of the first lease installed in Redis.",
    )
    redis_min_lease_size: Annotated[int, Field(ge=1, le=MAX_REDIS_LEASE)] = Field(
        DEFAULT_REDIS_MIN_LEASE_SIZE,
        description="The adaptive lease length never drops below.",
    )
    redis_max_lease_size: Annotated[int, Field(ge=1, le=MAX_REDIS_LEASE)] = Field(
        DEFAULT_REDIS_MAX_LEASE_SIZE,
        description="The adaptive lease length never grows past.",
    )
    redis_address_map: str | None = Field(
        None,
        description="host:port=host:port,... : reach the Redis node Sentinel names at the "
        "first address through the second (a proxy, NAT); unnamed addresses are used as is.",
    )

    # Keygen's own.
    database_url: str | None = Field(
        None, description="postgresql://... of the ledger; unset means the embedded SQLite one."
    )
    db_pool_min_size: Annotated[int, Field(ge=0)] = Field(
        DEFAULT_DB_POOL_MIN_SIZE, description="Connections to PostgreSQL kept open."
    )
    db_pool_max_size: Annotated[int, Field(ge=1)] = Field(
        DEFAULT_DB_POOL_MAX_SIZE, description="Most connections to PostgreSQL at once."
    )
    db_connect_timeout: Annotated[float, Field(gt=0)] = Field(
        DEFAULT_DB_CONNECT_TIMEOUT,
        description="Seconds to connect to PostgreSQL, or to wait for a pooled connection.",
    )
    db_command_timeout: Annotated[float, Field(gt=0)] = Field(
        DEFAULT_DB_COMMAND_TIMEOUT, description="Seconds a statement may take in PostgreSQL."
    )
    postgresql_mode: PostgresqlMode = Field(
        "direct",
        description="With PostgreSQL: 'direct' grants each batch of concurrent requests from "
        "the ledger; 'lease' serves from per-instance leases of KEYGEN_LEASE_SIZE IDs.",
    )
    data_dir: Path = Field(Path(".keygen"), description="Where local state lives.")
    max_block_size: Annotated[int, Field(ge=1, le=MAX_ID)] = DEFAULT_MAX_BLOCK_SIZE
    lease_size: Annotated[int, Field(ge=1, le=MAX_ID)] = Field(
        DEFAULT_LEASE_SIZE, description="IDs an in-process lease takes from the ledger at once."
    )
    instance_id: str = Field(default_factory=_default_instance_id)
    reserve: ReserveMode = Field(
        "auto",
        description="The emergency reserve layer: 'auto' runs it when REDIS_SENTINEL_HOSTS and "
        "KEYGEN_DATABASE_URL are both set, 'on' with any ledger, 'off' never.",
    )
    reserve_size: Annotated[int, Field(ge=1, le=MAX_ID)] = Field(
        DEFAULT_RESERVE_SIZE,
        description="IDs of each namespace's emergency reserve, per worker process.",
    )
    reserve_namespaces: str = Field(
        DEFAULT_RESERVE_NAMESPACES,
        description="Comma-separated namespaces to hold a reserve for from start-up; every "
        "namespace served gets one too.",
    )
    reserve_slots: Annotated[int, Field(ge=1, le=1024)] = Field(
        DEFAULT_RESERVE_SLOTS,
        description="Reserve journals (one per process) a data dir may hold; a process that "
        "finds them all locked refuses to start.",
    )
    reserve_timeout: Annotated[float, Field(gt=0)] = Field(
        DEFAULT_RESERVE_TIMEOUT,
        description="Seconds of ALLOCATION_TIMEOUT kept for the reserve: the layers before it "
        "give up this long before the deadline (at most half the budget).",
    )
    breaker_failure_threshold: Annotated[int, Field(ge=1)] = 3
    breaker_reset_timeout: Annotated[float, Field(gt=0)] = 2.0
    max_body_bytes: Annotated[int, Field(ge=64)] = DEFAULT_MAX_BODY_BYTES
    body_timeout: Annotated[float, Field(gt=0)] = Field(
        DEFAULT_BODY_TIMEOUT,
        description="Seconds a client may take to send a request's body before a 408 (and "
        "the most a request that never sends it delays a graceful shutdown).",
    )
    health_timeout: Annotated[float, Field(gt=0)] = Field(
        1.0, description="Seconds a layer's ping (or the Sentinels' answer) may take."
    )
    health_max_age: Annotated[float, Field(ge=0)] = Field(
        2.0,
        description="Seconds /metrics reuses the last health answer before the layers "
        "are pinged again (/health always pings).",
    )
    probe_interval: Annotated[float, Field(gt=0)] = Field(
        1.0,
        description="Seconds between two background probes of every layer (which also "
        "publish this worker's figures, record the history and evaluate the alerts).",
    )
    run_dir: Path | None = Field(
        None,
        description="Where the worker processes of one instance share their figures; "
        "`keygen serve` makes a fresh one at each start. Unset: each process counts alone.",
    )
    alert_webhook_url: str | None = Field(
        None,
        description="POST each alert transition here, in Alertmanager's webhook format.",
    )
    alert_time_scale: Annotated[float, Field(gt=0, le=1)] = Field(
        1.0, description="Multiplies every alert's window and duration (tests shorten them)."
    )
    log_level: LogLevel = "info"
    access_log: bool = False

    @field_validator("redis_sentinel_hosts", "database_url")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @model_validator(mode="after")
    def _pool_bounds(self) -> Settings:
        if self.db_pool_min_size > self.db_pool_max_size:
            raise ValueError("KEYGEN_DB_POOL_MIN_SIZE must not exceed KEYGEN_DB_POOL_MAX_SIZE")
        return self

    @field_validator("redis_sentinel_hosts")
    @classmethod
    def _hosts_are_host_port(cls, value: str | None) -> str | None:
        if value is not None:
            _parse_hosts(value)
        return value

    @model_validator(mode="after")
    def _redis_lease_bounds(self) -> Settings:
        if not self.redis_min_lease_size <= self.redis_max_lease_size:
            raise ValueError(
                "KEYGEN_REDIS_MIN_LEASE_SIZE must not exceed KEYGEN_REDIS_MAX_LEASE_SIZE"
            )
        return self

    @field_validator("reserve_namespaces")
    @classmethod
    def _namespaces_are_valid(cls, value: str) -> str:
        for namespace in _split(value):
            if NAMESPACE_PATTERN.match(namespace) is None:
                raise ValueError(f"{namespace!r} is not a valid namespace")
        return value

    @property
    def reserve_enabled(self) -> bool:
        """Whether the emergency reserve layer runs (see ``reserve``)."""
        if self.reserve == "auto":
            return bool(self.sentinels) and self.database_url is not None
        return self.reserve == "on"

    @property
    def reserve_budget(self) -> float:
        """Seconds of each request's budget kept for the reserve layer."""
        return min(self.reserve_timeout, self.allocation_timeout / 2)

    @property
    def reserve_namespace_list(self) -> tuple[str, ...]:
        """``KEYGEN_RESERVE_NAMESPACES`` as a tuple, without duplicates."""
        return tuple(dict.fromkeys(_split(self.reserve_namespaces)))

    @field_validator("redis_address_map")
    @classmethod
    def _address_map_is_valid(cls, value: str | None) -> str | None:
        parse_address_map(value)
        return value

    @property
    def redis_addresses(self) -> dict[Address, Address]:
        """``KEYGEN_REDIS_ADDRESS_MAP`` as a dict (empty: Sentinel's addresses as they are)."""
        return parse_address_map(self.redis_address_map)

    @property
    def sentinels(self) -> list[Address]:
        """``REDIS_SENTINEL_HOSTS`` as (host, port) pairs."""
        return _parse_hosts(self.redis_sentinel_hosts) if self.redis_sentinel_hosts else []


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def parse_address(text: str) -> Address:
    """``host:port`` as a pair; ValueError on anything else."""
    host, _, port = text.strip().rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{text.strip()!r} is not host:port")
    return host, int(port)


def _parse_hosts(value: str) -> list[Address]:
    return [parse_address(item) for item in value.split(",")]


def parse_address_map(value: str | None) -> dict[Address, Address]:
    """``host:port=host:port,...`` as a dict; ValueError on anything else."""
    mapping: dict[Address, Address] = {}
    for item in (value or "").split(","):
        if not item.strip():
            continue
        announced, sep, reached = item.strip().partition("=")
        if not sep:
            raise ValueError(f"{item.strip()!r} is not host:port=host:port")
        mapping[parse_address(announced)] = parse_address(reached)
    return mapping
