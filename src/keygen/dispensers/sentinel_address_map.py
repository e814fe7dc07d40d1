"""Sentinel with an address map: the master Sentinel names is reached at another address.

Sentinel hands out the address a Redis node announces. When the service must reach the
nodes through something else (a proxy per node, as ``keygen chaos`` uses to cut the service
off from Redis while Sentinel still sees it healthy, or a NAT), ``KEYGEN_REDIS_ADDRESS_MAP``
(``host:port=host:port,...``) translates each announced address; an address it does not
name is used as announced. An empty map is plain Sentinel.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.sentinel import Sentinel

__all__ = ["MappedSentinel", "parse_address_map"]

Address = tuple[str, int]


def parse_address_map(value: str | None) -> dict[Address, Address]:
    """``host:port=host:port,...`` as a dict; ValueError on anything else."""
    mapping: dict[Address, Address] = {}
    for item in (value or "").split(","):
        if not item.strip():
            continue
        announced, sep, reached = item.strip().partition("=")
        if not sep:
            raise ValueError(f"{item.strip()!r} is not host:port=host:port")
        mapping[_address(announced)] = _address(reached)
    return mapping


def _address(text: str) -> Address:
    host, _, port = text.strip().rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{text.strip()!r} is not host:port")
    return host, int(port)


class MappedSentinel(Sentinel):
    """``redis.asyncio.sentinel.Sentinel`` whose discovered master goes through the map."""

    def __init__(self, *args: Any, address_map: dict[Address, Address] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self.address_map = dict(address_map or {})

    async def discover_master(self, service_name: str) -> Address:
        host, port = await super().discover_master(service_name)
        return self.address_map.get((str(host), int(port)), (str(host), int(port)))
