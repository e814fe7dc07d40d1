"""The topology's shape: how many nodes, on which ports, with which Sentinel settings.

Standard library only: ``keygen cluster``'s parser takes its defaults from here, and must not
pay for redis-py or rich when ``keygen serve`` builds it.

Ports, from a base port B (6379 gives the original product description's
6379-6381 / 26379-26381)::

    Redis        B, B+1, B+2            (B is the first master)
    Sentinels    B+20000, B+20001, B+20002
    PostgreSQL   B+3

With no base port, every port is a free one picked at random (what tests use).
"""

from __future__ import annotations

from dataclasses import dataclass

from keygen.cluster import processes as _proc
from keygen.errors import ClusterError

HOST = "127.0.0.1"
DEFAULT_BASE_PORT = 6379
SENTINEL_PORT_OFFSET = 20000
POSTGRES_PORT_OFFSET = 3
REDIS_NODES = 3
SENTINELS = 3
DEFAULT_MASTER_NAME = "mymaster"
DEFAULT_QUORUM = 2
DEFAULT_DOWN_AFTER_MS = 5000
DEFAULT_FAILOVER_TIMEOUT_MS = 10000
DEFAULT_APPENDFSYNC = "everysec"


@dataclass(frozen=True)
class Ports:
    """Every port the topology listens on."""

    redis: tuple[int, ...]
    sentinels: tuple[int, ...]
    postgres: int | None

    @classmethod
    def from_base(cls, base: int, *, with_postgres: bool = True) -> Ports:
        """The documented scheme: Redis B..B+2, Sentinels B+20000.., PostgreSQL B+3."""
        if not 1024 <= base <= 65535 - SENTINEL_PORT_OFFSET - SENTINELS:
            raise ClusterError(
                f"base port {base} out of range: 1024..{65535 - SENTINEL_PORT_OFFSET - SENTINELS}"
            )
        return cls(
            redis=tuple(base + i for i in range(REDIS_NODES)),
            sentinels=tuple(base + SENTINEL_PORT_OFFSET + i for i in range(SENTINELS)),
            postgres=base + POSTGRES_PORT_OFFSET if with_postgres else None,
        )

    @classmethod
    def free(cls, *, with_postgres: bool = True) -> Ports:
        """Free ports picked by the kernel (no pairing between Redis and Sentinel ports)."""
        ports = _proc.free_ports(REDIS_NODES + SENTINELS + 1)
        return cls(
            redis=tuple(ports[:REDIS_NODES]),
            sentinels=tuple(ports[REDIS_NODES : REDIS_NODES + SENTINELS]),
            postgres=ports[-1] if with_postgres else None,
        )

    def all(self) -> list[int]:
        return [*self.redis, *self.sentinels, *([self.postgres] if self.postgres else [])]

    def busy(self) -> list[int]:
        """The ports something already listens on."""
        return [port for port in self.all() if _proc.port_in_use(port)]
