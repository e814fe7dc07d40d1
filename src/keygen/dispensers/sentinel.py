"""The Sentinel client: built once from the settings, for the Redis layer and for backups.

Sentinel hands out the address a Redis node announces. When the service must reach the
nodes through something else (a proxy per node, as ``keygen chaos`` uses to cut the service
off from Redis while Sentinel still sees it healthy, or a NAT), ``KEYGEN_REDIS_ADDRESS_MAP``
(``host:port=host:port,...``) translates each announced address; an address it does not
name is used as announced. An empty map is plain Sentinel.

Every connection Keygen opens to a data node or a Sentinel takes its credentials and TLS
settings from :func:`redis_link` and :func:`sentinel_link`, so that no client can be built
without them. With TLS the server's certificate is always verified, host name included: the
host is the one connected to, which for a data node is the address Sentinel announces (an IP
such as ``127.0.0.1``, so the certificate must carry it as an IP subjectAltName) or its
entry in the address map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from keygen.config import Address, Settings

__all__ = ["MappedSentinel", "master_of", "redis_link", "sentinel_link", "sentinels_of"]


def _link(
    username: str | None,
    password: str | None,
    tls: bool,
    settings: Settings,
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if username:
        kwargs["username"] = username
    if password:
        kwargs["password"] = password
    if tls:
        kwargs.update(
            ssl=True,
            ssl_cert_reqs="required",
            ssl_check_hostname=True,
            ssl_ca_certs=_path(settings.redis_ssl_ca_certs),
            ssl_certfile=_path(settings.redis_ssl_certfile),
            ssl_keyfile=_path(settings.redis_ssl_keyfile),
        )
    return kwargs


def _path(path: Path | None) -> str | None:
    return None if path is None else str(path)


def redis_link(settings: Settings) -> dict[str, Any]:
    """redis-py connection arguments for the data nodes: the ACL user and password
    (``KEYGEN_REDIS_USERNAME``, ``KEYGEN_REDIS_PASSWORD``) and, with ``KEYGEN_REDIS_TLS``,
    TLS with the certificate and host name verified against ``KEYGEN_REDIS_SSL_CA_CERTS``
    (the client certificate ``KEYGEN_REDIS_SSL_CERTFILE`` shown when set)."""
    return _link(settings.redis_username, settings.redis_password, settings.redis_tls, settings)


def sentinel_link(settings: Settings) -> dict[str, Any]:
    """redis-py connection arguments for the Sentinels: ``KEYGEN_REDIS_SENTINEL_USERNAME``,
    ``KEYGEN_REDIS_SENTINEL_PASSWORD`` and, with ``KEYGEN_REDIS_SENTINEL_TLS``, TLS as for
    the data nodes (the same CA and client certificate)."""
    return _link(
        settings.redis_sentinel_username,
        settings.redis_sentinel_password,
        settings.redis_sentinel_tls,
        settings,
    )


class MappedSentinel(Sentinel):
    """``redis.asyncio.sentinel.Sentinel`` whose discovered master goes through the map."""

    def __init__(
        self, *args: Any, address_map: dict[Address, Address] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.address_map = dict(address_map or {})

    async def discover_master(self, service_name: str) -> Address:
        host, port = await super().discover_master(service_name)
        return self.address_map.get((str(host), int(port)), (str(host), int(port)))


def sentinels_of(settings: Settings) -> MappedSentinel:
    """The Sentinels, asked with the socket timeouts and without redis-py's retries: it would
    try a Sentinel that is down 10 more times, with backoffs of up to 1 s, before asking the
    next one, and the layer's time budget would be spent long before. The Sentinels'
    credentials and TLS settings are :func:`sentinel_link`'s.
    """
    timeout = settings.redis_socket_timeout
    # A Sentinel that sees fewer peers than the quorum needs may be partitioned off: its
    # idea of the master is not trusted.
    return MappedSentinel(
        settings.sentinels,
        min_other_sentinels=settings.redis_sentinel_quorum - 1,
        sentinel_kwargs={
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),
            **sentinel_link(settings),
        },
        address_map=settings.redis_addresses,
    )


def master_of(
    settings: Settings, sentinel: Sentinel, *, socket_timeout: float | None = None
) -> redis.asyncio.Redis:
    """A client of the master the Sentinels name, found again on every new connection.

    No retries inside redis-py: a failed call falls back to the next layer at once, and the
    breaker decides when to try Redis again. ``socket_timeout`` defaults to
    ``KEYGEN_REDIS_SOCKET_TIMEOUT``; a tool's long command (BGSAVE, SCAN) may ask for more.
    The credentials and TLS settings are the data nodes' (:func:`redis_link`).
    """
    timeout = settings.redis_socket_timeout
    client: redis.asyncio.Redis = sentinel.master_for(
        settings.redis_sentinel_master_name,
        decode_responses=True,
        retry=Retry(NoBackoff(), 0),
        socket_timeout=socket_timeout or timeout,
        socket_connect_timeout=timeout,
        **redis_link(settings),
    )
    return client
