"""Settings, read once from the environment (and a ``.env`` file) into one typed object.

The original product's names are kept where they exist (``ID_BLOCK_SIZE``,
``REDIS_SENTINEL_HOSTS``, ...); everything else is ``KEYGEN_*``.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from keygen.constants import MAX_ID, NAMESPACE_PATTERN
from keygen.rates import NamespaceRule, parse_namespace_limits

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
#: Where the journals' witnesses live: memory-backed, emptied at each boot, outside every
#: volume and snapshot of the data dir (dispensers/journal_witness.py, docs/reserve.md).
DEFAULT_RESERVE_WITNESS_DIR = Path("/dev/shm")
# The HTTP edge's limits (docs/security.md says why each default is what it is).
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_KEEPALIVE_TIMEOUT = 5.0
DEFAULT_MAX_HEADER_BYTES = 16384
DEFAULT_MAX_PIPELINE = 16
DEFAULT_ALLOWED_HOSTS = "*"
# Bounds on what clients can make the ledger keep (docs/security.md, "Growth").
DEFAULT_MAX_NAMESPACES = 10_000
DEFAULT_AUDIT_RETENTION_DAYS = 90
# API keys (keygen/auth.py, docs/security.md "Keys").
DEFAULT_AUTH_REFRESH_INTERVAL = 2.0
#: Seconds a key table read stays in force while the ledger cannot be read again: a revoked
#: key stops working within this, whatever the ledger's state (docs/security.md "Keys").
DEFAULT_AUTH_LEASE_SECONDS = 300.0

#: A host and a port, as ``REDIS_SENTINEL_HOSTS`` and ``KEYGEN_REDIS_ADDRESS_MAP`` name them.
Address = tuple[str, int]

#: How the ``postgresql`` layer serves: a grant per batch of concurrent requests, or leases.
PostgresqlMode = Literal["direct", "lease"]

#: Whether the emergency reserve layer runs: "auto" = with Redis Sentinels and PostgreSQL.
ReserveMode = Literal["auto", "on", "off"]

#: Whether requests need an API key: "auto" = as soon as the ledger holds one.
AuthMode = Literal["auto", "required", "off"]
#: KEYGEN_SSL_CLIENT_CERT: whether clients of the service must show a certificate (mTLS).
ClientCertMode = Literal["none", "optional", "required"]
LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]


def _original_name(name: str) -> AliasChoices:
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
        validation_alias=_original_name("ID_BLOCK_SIZE"),
        description="Size of a request that names none.",
    )
    allocation_timeout: Annotated[float, Field(gt=0)] = Field(
        DEFAULT_ALLOCATION_TIMEOUT,
        validation_alias=_original_name("ALLOCATION_TIMEOUT"),
        description="Seconds a request may take across all layers before it gets a 503.",
    )
    lock_timeout: Annotated[float, Field(gt=0)] = Field(
        DEFAULT_LOCK_TIMEOUT,
        validation_alias=_original_name("LOCK_TIMEOUT"),
        description="Seconds a lease-refill lock is held at most.",
    )
    redis_sentinel_hosts: str | None = Field(
        None,
        validation_alias=_original_name("REDIS_SENTINEL_HOSTS"),
        description="host:port,host:port of the Sentinels; unset means no Redis layer.",
    )
    redis_sentinel_master_name: str = Field(
        "mymaster", validation_alias=_original_name("REDIS_SENTINEL_MASTER_NAME")
    )
    redis_sentinel_quorum: Annotated[int, Field(ge=1)] = Field(
        2, validation_alias=_original_name("REDIS_SENTINEL_QUORUM")
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
    redis_segment_seconds: Annotated[float, Field(ge=0, le=60)] = Field(
        1.0,
        description="Seconds of this process's demand a segment carved from the Redis lease "
        "holds (served from memory, the next one fetched ahead); 0: a Redis call per batch.",
    )
    redis_segment_min_size: Annotated[int, Field(ge=1, le=MAX_REDIS_LEASE)] = Field(
        10_000, description="A segment's length never drops below."
    )
    redis_segment_max_size: Annotated[int, Field(ge=1, le=MAX_REDIS_LEASE)] = Field(
        10_000_000,
        description="A segment's length never grows past: a crash wastes at most twice this "
        "per namespace and process.",
    )
    redis_address_map: str | None = Field(
        None,
        description="host:port=host:port,... : reach the Redis node Sentinel names at the "
        "first address through the second (a proxy, NAT); unnamed addresses are used as is.",
    )

    # Keygen's own.
    database_url: str | None = Field(
        None,
        repr=False,  # it may hold a password: keep it out of reprs (keygen.redact for the rest)
        description="postgresql://... of the ledger; unset means the embedded SQLite one.",
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
        "the ledger; 'lease' serves from in-process segments the ledger grants (see "
        "KEYGEN_LEASE_SIZE).",
    )
    data_dir: Path = Field(Path(".keygen"), description="Where local state lives.")
    max_block_size: Annotated[int, Field(ge=1, le=MAX_ID)] = DEFAULT_MAX_BLOCK_SIZE
    lease_size: Annotated[int, Field(ge=1, le=MAX_ID)] = Field(
        DEFAULT_LEASE_SIZE,
        description="The least IDs an in-process segment takes from the ledger at once (it "
        "grows with demand up to 1024 times this).",
    )
    lease_seconds: Annotated[float, Field(gt=0, le=60)] = Field(
        1.0,
        description="Seconds of this process's demand an in-process segment granted by the "
        "ledger holds (served from memory, the next one fetched ahead).",
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
    reserve_witness_dir: Path = Field(
        DEFAULT_RESERVE_WITNESS_DIR,
        description="Memory-backed directory, outside the data dir, where each reserve "
        "journal's witness is kept: a journal it does not vouch for (after a reboot, a copy "
        "or a restore) has its reserves abandoned, never served from.",
    )
    breaker_failure_threshold: Annotated[int, Field(ge=1)] = Field(
        3, description="Consecutive failures (a stalled attempt counts) that open a breaker."
    )
    stall_timeout: Annotated[float, Field(gt=0)] = Field(
        0.5,
        description="Seconds an attempt on a layer may stay unanswered before it counts as "
        "a failure of the layer (a silent layer is skipped after a few).",
    )
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
        description="Seconds /health and /metrics reuse the background probe's last answer "
        "before a read pings the layers itself (0: every read pings).",
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
        repr=False,
        description="POST each alert transition here, in Alertmanager's webhook format.",
    )
    alert_time_scale: Annotated[float, Field(gt=0, le=1)] = Field(
        1.0, description="Multiplies every alert's window and duration (tests shorten them)."
    )
    log_level: LogLevel = "info"
    access_log: bool = False

    # The HTTP edge's limits, per worker process (api/protocol.py enforces them).
    max_connections: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        DEFAULT_MAX_CONNECTIONS,
        description="Open connections a worker keeps; past it the longest-idle one is closed "
        "for a newcomer, or, none being idle, the newcomer gets a 503 and is closed.",
    )
    header_timeout: Annotated[float, Field(gt=0, le=3600)] = Field(
        DEFAULT_HEADER_TIMEOUT,
        description="Seconds a client may take to send a request's line and headers (from "
        "its first byte, or from connecting) before a 408 and a close: slowloris.",
    )
    keepalive_timeout: Annotated[float, Field(gt=0, le=3600)] = Field(
        DEFAULT_KEEPALIVE_TIMEOUT,
        description="Seconds an idle keep-alive connection is kept between two requests.",
    )
    max_header_bytes: Annotated[int, Field(ge=1024, le=1 << 24)] = Field(
        DEFAULT_MAX_HEADER_BYTES,
        description="Bytes a request's line and headers may take together; past it a 431.",
    )
    max_pipeline: Annotated[int, Field(ge=1, le=1024)] = Field(
        DEFAULT_MAX_PIPELINE,
        description="Pipelined requests a connection may have waiting behind the one being "
        "answered; a client that sends more without reading is disconnected.",
    )
    allowed_hosts: str = Field(
        DEFAULT_ALLOWED_HOSTS,
        description="Comma-separated Host header values served ('*' any, '*.example.com' a "
        "domain's subdomains); any other gets a 400. Set it when browsers can reach the "
        "service: it defeats DNS rebinding.",
    )

    # Bounds on what clients can make the ledger keep (ledgers/ enforce them).
    max_namespaces: Annotated[int, Field(ge=1, le=100_000_000)] = Field(
        DEFAULT_MAX_NAMESPACES,
        description="Namespaces the ledger may hold; a request creating one more gets a 409 "
        "too_many_namespaces and nothing is allocated.",
    )
    audit_retention_days: Annotated[int, Field(ge=0, le=36_500)] = Field(
        DEFAULT_AUDIT_RETENTION_DAYS,
        description="Days a grant row is kept in the audit trail (pruned in the background, "
        "except each namespace's latest grant and every reserve grant); 0 keeps them all.",
    )

    # API keys (keygen/auth.py checks them; docs/security.md).
    auth: AuthMode = Field(
        "auto",
        description="Whether requests need an API key (Authorization: Bearer <token>): "
        "'required', 'off', or 'auto': required as soon as the ledger holds a key.",
    )
    auth_secret: str | None = Field(
        None,
        repr=False,  # the server secret the keys' hashes are made with
        min_length=16,
        description="The server secret API keys are hashed with (HMAC-SHA256); unset: the "
        "file auth.secret in KEYGEN_DATA_DIR, made on first use. Instances sharing a "
        "PostgreSQL ledger need the same one.",
    )
    auth_refresh_interval: Annotated[float, Field(gt=0, le=5)] = Field(
        DEFAULT_AUTH_REFRESH_INTERVAL,
        description="Seconds between two reads of the key table by each worker: a new or "
        "revoked key takes effect within this (and a read's time).",
    )
    auth_lease_seconds: Annotated[float, Field(gt=0, le=86_400)] = Field(
        DEFAULT_AUTH_LEASE_SECONDS,
        description="Seconds the last key table read stays in force while the ledger cannot "
        "be read: past it every request gets a 503 keys_unavailable, so a revoked key stops "
        "working within this even while the ledger is down.",
    )

    # Rate limits (keygen/quotas.py; a key's own are set by keygen keys create).
    namespace_limits: str = Field(
        "",
        description="Limits per namespace: '<glob>:requests_per_second=N,ids_per_second=N,"
        "ids_per_day=N;...' (the first matching glob counts; each namespace on its own).",
    )
    rate_limit_sync_interval: Annotated[float, Field(gt=0, le=10)] = Field(
        0.1,
        description="Seconds between two exchanges of each instance's counts through Redis "
        "(when Sentinels are configured): how far several instances may overshoot a limit.",
    )

    @field_validator("namespace_limits")
    @classmethod
    def _namespace_limits_parse(cls, value: str) -> str:
        parse_namespace_limits(value)
        return value

    @property
    def namespace_rules(self) -> tuple[NamespaceRule, ...]:
        return parse_namespace_limits(self.namespace_limits)

    # TLS and credentials (docs/security.md). PostgreSQL's are in KEYGEN_DATABASE_URL
    # (password, sslmode=verify-full, sslrootcert, sslcert, sslkey), as libpq spells them.
    ssl_certfile: Path | None = Field(
        None, description="The service's certificate chain (PEM): HTTPS instead of HTTP."
    )
    ssl_keyfile: Path | None = Field(None, description="The private key of KEYGEN_SSL_CERTFILE.")
    ssl_ca_certs: Path | None = Field(
        None, description="CA certificates (PEM) that client certificates are checked against."
    )
    ssl_client_cert: ClientCertMode = Field(
        "none",
        description="mTLS: 'required' refuses a client without a certificate signed by "
        "KEYGEN_SSL_CA_CERTS, 'optional' checks one when given, 'none' asks for none.",
    )
    redis_username: str | None = Field(None, description="ACL user of the Redis data nodes.")
    redis_password: str | None = Field(
        None, repr=False, description="Password of KEYGEN_REDIS_USERNAME (or requirepass)."
    )
    redis_tls: bool = Field(False, description="TLS to the Redis data nodes (rediss).")
    redis_ssl_ca_certs: Path | None = Field(
        None,
        description="CA certificates (PEM) the Redis nodes' and Sentinels' are checked "
        "against (unset: the system's).",
    )
    redis_ssl_certfile: Path | None = Field(
        None, description="Client certificate (PEM) shown to Redis and the Sentinels, if asked."
    )
    redis_ssl_keyfile: Path | None = Field(
        None, description="The private key of KEYGEN_REDIS_SSL_CERTFILE."
    )
    redis_sentinel_username: str | None = Field(None, description="ACL user of the Sentinels.")
    redis_sentinel_password: str | None = Field(
        None, repr=False, description="Password of KEYGEN_REDIS_SENTINEL_USERNAME."
    )
    redis_sentinel_tls: bool = Field(False, description="TLS to the Sentinels.")

    @model_validator(mode="after")
    def _tls_files(self) -> Settings:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("KEYGEN_SSL_CERTFILE and KEYGEN_SSL_KEYFILE go together")
        if self.ssl_client_cert != "none" and (
            self.ssl_ca_certs is None or self.ssl_certfile is None
        ):
            raise ValueError(
                "KEYGEN_SSL_CLIENT_CERT needs KEYGEN_SSL_CA_CERTS and KEYGEN_SSL_CERTFILE"
            )
        if (self.redis_ssl_certfile is None) != (self.redis_ssl_keyfile is None):
            raise ValueError("KEYGEN_REDIS_SSL_CERTFILE and KEYGEN_REDIS_SSL_KEYFILE go together")
        return self

    @field_validator("redis_sentinel_hosts", "database_url")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("database_url")
    @classmethod
    def _database_url_is_postgresql(cls, value: str | None) -> str | None:
        scheme = (value or "").partition("://")[0].lower()
        if value is not None and scheme not in ("postgresql", "postgres"):
            shown = scheme + "://..." if "://" in value else "a URL without a scheme"
            raise ValueError(f"must be a postgresql:// URL (or unset for SQLite), got {shown}")
        return value

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
    def _segment_bounds(self) -> Settings:
        if not self.redis_segment_min_size <= self.redis_segment_max_size:
            raise ValueError(
                "KEYGEN_REDIS_SEGMENT_MIN_SIZE must not exceed KEYGEN_REDIS_SEGMENT_MAX_SIZE"
            )
        return self

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
            if NAMESPACE_PATTERN.fullmatch(namespace) is None:
                raise ValueError(f"{namespace!r} is not a valid namespace")
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts_are_names(cls, value: str) -> str:
        if not _split(value):
            raise ValueError("name at least one host, or '*' for any")
        for host in _split(value):
            if host != "*" and not _HOST_PATTERN.fullmatch(host):
                raise ValueError(f"{host!r} is not a host name, '*' or '*.domain'")
        return value

    @property
    def allowed_host_list(self) -> tuple[str, ...] | None:
        """``KEYGEN_ALLOWED_HOSTS`` lowercased, or None when any host is served."""
        hosts = tuple(host.lower() for host in _split(self.allowed_hosts))
        return None if "*" in hosts else hosts

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


_HOST_PATTERN = re.compile(r"(\*\.)?[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]")


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


#: A host name, an IPv4 address, or an IPv6 one in brackets.
_HOST = re.compile(r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_][A-Za-z0-9_.-]*")


def parse_address(text: str) -> Address:
    """``host:port`` as a pair; ValueError on anything else."""
    host, _, port = text.strip().rpartition(":")
    if not _HOST.fullmatch(host) or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text.strip()[:80]!r} is not host:port (several are separated by ',')")
    return host.strip("[]"), int(port)


def describe(error: ValidationError) -> list[str]:
    """Each problem of the settings, named by the environment variable that sets it."""
    problems = []
    for e in error.errors():
        name = str(e["loc"][0]) if e["loc"] else ""
        field = Settings.model_fields.get(name)
        alias = field.validation_alias if field is not None else None
        if isinstance(alias, AliasChoices):
            variable = str(alias.choices[0])
        elif field is None:
            variable = name  # already the variable: one of the original product's names
        else:
            variable = f"KEYGEN_{name.upper()}"
        message = str(e["msg"]).removeprefix("Value error, ")
        problems.append(f"{variable}: {message}" if variable else message)
    return problems


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
