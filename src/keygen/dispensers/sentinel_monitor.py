"""Watches the Sentinels: which server is master, whether they have quorum, and failovers.

Failovers are counted from the master's ``config-epoch``, which Sentinel raises by one at
every failover it completes: the count is the epoch now minus the epoch when this instance
first read it, so a failover is counted even if no announcement reached us. Sentinel's
``+switch-master`` announcements (listened to on one Sentinel at a time) make the count and
the time of the last failover prompt, and are logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from keygen.dispensers.redis import REDIS_FAILURES
from keygen.snapshots import SentinelSnapshot

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
        self._first_epoch: int | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen_forever(), name="keygen-sentinel-monitor")

    async def _listen_forever(self) -> None:
        await self.refresh_failovers()  # the baseline epoch, before anything can change it
        while True:
            for node in self.sentinel.sentinels:
                try:
                    await self._listen(node)
                except REDIS_FAILURES as exc:
                    log.debug("sentinel subscription lost: %s", exc)
            await asyncio.sleep(RESUBSCRIBE_DELAY)

    async def _listen(self, node: Redis) -> None:
        # A connection of its own without a read timeout: a subscriber is silent for hours.
        # The Sentinels' credentials and TLS settings are those the Sentinel client was built
        # with (keygen.dispensers.sentinel.sentinel_link), timeouts and retries aside.
        address = node.connection_pool.connection_kwargs
        link = {
            key: value
            for key, value in self.sentinel.sentinel_kwargs.items()
            if not key.startswith("socket_") and key != "retry"
        }
        listener = Redis(
            host=address["host"],
            port=address["port"],
            socket_connect_timeout=self._timeout,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0),  # the next Sentinel, at once
            **link,
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
                    self.last_failover_at = time.time()
                    log.warning("Redis failover of %s: %s", name, " ".join(addresses))
                    await self.refresh_failovers()
        finally:
            await pubsub.aclose()
            await listener.aclose()

    async def refresh_failovers(self) -> None:
        """Update the failover count from the master's config-epoch on the first Sentinel
        that answers."""
        for node in self.sentinel.sentinels:
            try:
                async with asyncio.timeout(self._timeout):
                    reply = await node.execute_command(  # type: ignore[no-untyped-call]
                        "SENTINEL", "MASTER", self.master_name
                    )
            except (*REDIS_FAILURES, TimeoutError):
                continue
            epoch = _config_epoch(reply)
            if epoch is None:
                continue
            if self._first_epoch is None:
                self._first_epoch = epoch
            if epoch - self._first_epoch > self.failovers:
                self.failovers = epoch - self._first_epoch
                self.last_failover_at = self.last_failover_at or time.time()
            return

    async def master_address(self) -> str | None:
        try:
            async with asyncio.timeout(self._timeout):
                host, port = await self.sentinel.discover_master(self.master_name)
        except (*REDIS_FAILURES, TimeoutError):
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
            except (*REDIS_FAILURES, TimeoutError):
                continue
        return False

    async def snapshot(self) -> SentinelSnapshot:
        """Ask the Sentinels for the master and the quorum (each within the timeout)."""
        master, quorum, _ = await asyncio.gather(
            self.master_address(), self.has_quorum(), self.refresh_failovers()
        )
        return SentinelSnapshot(master, quorum, self.failovers, self.last_failover_at)

    def unreachable(self) -> SentinelSnapshot:
        """What is known when no Sentinel answered in time: the failovers counted so far."""
        return SentinelSnapshot(None, False, self.failovers, self.last_failover_at)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.sentinel.aclose()


def _config_epoch(reply: Any) -> int | None:
    """The ``config-epoch`` field of a ``SENTINEL MASTER`` reply (flat or parsed)."""
    if isinstance(reply, dict):
        items = [item for pair in reply.items() for item in pair]
    elif isinstance(reply, list):
        items = reply
    else:
        return None
    text = [item.decode() if isinstance(item, bytes) else str(item) for item in items]
    fields = dict(zip(text[::2], text[1::2], strict=False))
    value = fields.get("config-epoch")
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None
