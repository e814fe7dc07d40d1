"""Watches the Sentinels: which server is master, whether they have quorum, and failovers.

Failovers are counted from Sentinel's ``+switch-master`` announcements, listened to on one
Sentinel at a time (the next one when it fails), so each failover is counted once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

#: Seconds between attempts to listen again after every Sentinel failed.
RESUBSCRIBE_DELAY = 1.0


class SentinelMonitor:
    """Keeps the failover count and answers health questions about the Sentinels."""

    def __init__(self, sentinel: Sentinel, master_name: str, *, timeout: float) -> None:
        self.sentinel = sentinel
        self.master_name = master_name
        self.failovers = 0
        self.last_failover_at: float | None = None
        self._timeout = timeout
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen_forever(), name="keygen-sentinel-monitor")

    async def _listen_forever(self) -> None:
        while True:
            for node in self.sentinel.sentinels:
                try:
                    await self._listen(node)
                except (RedisError, OSError) as exc:
                    log.debug("sentinel subscription lost: %s", exc)
            await asyncio.sleep(RESUBSCRIBE_DELAY)

    async def _listen(self, node: Redis) -> None:
        # A connection of its own without a read timeout: a subscriber is silent for hours.
        address = node.connection_pool.connection_kwargs
        listener = Redis(
            host=address["host"], port=address["port"], socket_connect_timeout=self._timeout,
            socket_keepalive=True,
        )
        pubsub = listener.pubsub()
        try:
            await pubsub.subscribe("+switch-master")
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                if message is None or message.get("type") != "message":
                    continue
                data = message["data"]
                text = data.decode() if isinstance(data, bytes) else str(data)
                # "<master name> <old ip> <old port> <new ip> <new port>"
                name, *addresses = text.split()
                if name == self.master_name:
                    self.failovers += 1
                    self.last_failover_at = time.time()
                    log.warning("Redis failover of %s: %s", name, " ".join(addresses))
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await listener.aclose()

    async def master_address(self) -> str | None:
        try:
            async with asyncio.timeout(self._timeout):
                host, port = await self.sentinel.discover_master(self.master_name)
        except (RedisError, OSError, TimeoutError):
            return None
        return f"{host}:{port}"

    async def has_quorum(self) -> bool:
        """``SENTINEL CKQUORUM`` on the first Sentinel that answers."""
        for node in self.sentinel.sentinels:
            try:
                async with asyncio.timeout(self._timeout):
                    # Not redis-py's sentinel_ckquorum(): it reads "OK 3 usable Sentinels..."
                    # as False. A missing quorum is an error reply (-NOQUORUM).
                    reply = await node.execute_command(  # type: ignore[no-untyped-call]
                        "SENTINEL", "CKQUORUM", self.master_name
                    )
                    text = reply.decode() if isinstance(reply, bytes) else str(reply)
                    return text.startswith("OK")
            except (RedisError, OSError, TimeoutError):
                continue
        return False

    async def describe(self) -> dict[str, Any]:
        master, quorum = await asyncio.gather(self.master_address(), self.has_quorum())
        return {
            "master": master,
            "sentinel_quorum": quorum,
            "failovers": self.failovers,
            "last_failover_at": self.last_failover_at,
        }

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.sentinel.aclose()
