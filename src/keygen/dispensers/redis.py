"""The Redis Sentinel dispenser: every instance carves ranges from one shared, fenced lease.

Redis never owns the ID space. Each namespace's lease in Redis is a span the ledger granted
once; one atomic function call per request carves a range out of it, on the master, after
checking that the executing server is the very incarnation that installed the lease (see
``redis_functions.py`` for the fence). When the lease is missing, exhausted or fenced, one
instance takes a fresh grant from the ledger and installs it with a compare-and-set, under a
distributed lock so that a thousand requests finding the lease empty cause one grant.

The lease length adapts to the rate, as Meituan Leaf's segments do: a lease that lasted less
than ``FAST_LEASE`` seconds doubles the next one, one that lasted more than ``SLOW_LEASE``
halves it, within the configured bounds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

from redis.asyncio import Redis
from redis.exceptions import LockError, RedisError, ResponseError

from keygen.constants import GRANT_LEASE, SOURCE_REDIS
from keygen.dispensers import redis_functions as fn
from keygen.dispensers.singleflight import SingleFlight
from keygen.errors import LayerUnavailable
from keygen.ledgers.base import Ledger
from keygen.ranges import IdRange

log = logging.getLogger(__name__)

LEASE_KEY: Final = "keygen:lease:{}"
LOCK_KEY: Final = "keygen:refill-lock:{}"
FAST_LEASE: Final = 15 * 60.0  # seconds: a lease used up faster than this doubles the next
SLOW_LEASE: Final = 30 * 60.0  # seconds: a lease lasting longer than this halves the next
#: How long an instance that finds another instance refilling waits before looking again.
REFILL_POLL: Final = 0.005


@dataclass(frozen=True, slots=True)
class LeaseState:
    """What ``PEEK`` saw of a namespace's lease on the current master."""

    grant: str  # "" when there is no lease
    length: int
    left: int
    installed_at: float
    fenced: bool


class RedisDispenser:
    """Ranges from the shared lease in Redis, refilled from the ledger."""

    source = SOURCE_REDIS

    def __init__(
        self, redis: Redis, ledger: Ledger, *, holder: str, lease_size: int,
        min_lease_size: int, max_lease_size: int, lock_timeout: float,
    ) -> None:
        self.redis = redis
        self.active_locks = 0
        self.ids_wasted = 0  # lease tails abandoned at refills (exhausted or fenced)
        self.refills = 0
        self._ledger = ledger
        self._holder = holder
        self._initial_lease = lease_size
        self._min_lease = min_lease_size
        self._max_lease = max_lease_size
        self._lock_timeout = lock_timeout
        self._refills = SingleFlight()

    async def allocate(self, namespace: str, size: int) -> IdRange:
        key = LEASE_KEY.format(namespace)
        while True:
            reply = await self._call(fn.ALLOCATE, key, size)
            if reply[0] == "OK":
                used_after = int(reply[2])
                start = int(reply[1]) + used_after - size
                return IdRange(namespace, start, start + size - 1)
            # EMPTY, FENCED or EXHAUSTED: one refill per namespace in this instance at a
            # time; every request that found the lease short waits for it, then tries again.
            await self._refills.run(namespace, partial(self._refill, namespace, size))

    async def _refill(self, namespace: str, size: int) -> None:
        lock = self.redis.lock(
            LOCK_KEY.format(namespace), timeout=self._lock_timeout, blocking=False
        )
        try:
            acquired = await lock.acquire()
        except (RedisError, LockError) as exc:
            raise LayerUnavailable(f"Redis refill lock: {exc}") from exc
        if not acquired:
            await asyncio.sleep(REFILL_POLL)  # another instance is installing a lease
            return
        self.active_locks += 1
        try:
            await self._install_fresh_lease(namespace, size)
        finally:
            self.active_locks -= 1
            try:
                await lock.release()
            except (RedisError, LockError) as exc:
                # Expired or lost in a failover: the lock only saves work, the
                # compare-and-set in INSTALL is what keeps leases from clobbering each other.
                log.warning("releasing the refill lock of %r: %s", namespace, exc)

    async def _install_fresh_lease(self, namespace: str, size: int) -> None:
        key = LEASE_KEY.format(namespace)
        state = await self.peek(namespace)
        if state.grant and not state.fenced and state.left >= size:
            return  # another instance refilled it while we took the lock
        length = max(size, self._next_length(state))
        grant = await self._ledger.grant(namespace, length, kind=GRANT_LEASE, holder=self._holder)
        grant_id = f"{namespace}:{grant.start}"
        reply = await self._call(
            fn.INSTALL, key, state.grant, grant_id, str(grant.start), str(grant.size),
            repr(time.time()),
        )
        if reply[0] == "INSTALLED":
            self.refills += 1
            self.ids_wasted += state.left
            log.info("installed lease %s..%s of %r (%s IDs)%s", grant.start, grant.end,
                     namespace, grant.size, " after a fence" if state.fenced else "")
        else:  # CONFLICT: someone installed one meanwhile; ours is never used
            self.ids_wasted += grant.size

    def _next_length(self, previous: LeaseState) -> int:
        if not previous.grant or previous.fenced:
            return max(previous.length, self._initial_lease)
        lasted = time.time() - previous.installed_at
        length = previous.length
        if lasted < FAST_LEASE:
            length *= 2
        elif lasted > SLOW_LEASE:
            length //= 2
        return min(self._max_lease, max(self._min_lease, length))

    async def peek(self, namespace: str) -> LeaseState:
        """The namespace's lease as the current master sees it."""
        grant, length, left, installed_at, fenced = await self._call(
            fn.PEEK, LEASE_KEY.format(namespace)
        )
        return LeaseState(str(grant), int(length), int(left), float(installed_at), fenced == 1)

    async def _call(self, function: str, key: str, *args: Any) -> list[Any]:
        """FCALL ``function``, loading the library first where the server lacks it."""
        for attempt in (1, 2):
            try:
                reply: list[Any] = await self.redis.fcall(function, 1, key, *args)
                return reply
            except ResponseError as exc:
                if attempt == 1 and "function not found" in str(exc).lower():
                    await self.load_functions()
                    continue
                raise LayerUnavailable(f"Redis: {exc}") from exc
            except RedisError as exc:
                raise LayerUnavailable(f"Redis: {exc}") from exc
        raise AssertionError("unreachable")

    async def load_functions(self) -> None:
        """Load (or replace) the function library on the current master."""
        try:
            await self.redis.function_load(fn.LIBRARY, replace=True)
        except RedisError as exc:
            raise LayerUnavailable(f"Redis: loading functions: {exc}") from exc

    async def ping(self) -> None:
        try:
            await self.redis.ping()
        except RedisError as exc:
            raise LayerUnavailable(f"Redis: {exc}") from exc

    async def aclose(self) -> None:
        await self.redis.aclose()
