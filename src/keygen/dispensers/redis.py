"""The Redis Sentinel dispenser: every instance carves ranges from one shared, fenced lease.

Redis never owns the ID space. Each namespace's lease in Redis is a span the ledger granted
once; one atomic function call carves ranges out of it, on the master, after checking that
the executing server is the very incarnation that installed the lease (see
``redis_functions.py`` for the fence). Concurrent requests for a namespace share one call of
their total size (``coalescing.py``): redis-py spends about 50 µs of CPU per call, as much
as all the rest of a request, so under load one call serves a whole batch. When the lease is
missing, exhausted or fenced, one instance takes a fresh grant from the ledger and installs
it with a compare-and-set, under a distributed lock so that a thousand requests finding the
lease empty cause one grant. The lock is fenced like the lease (void on another
incarnation), and a release that failed is retried until it succeeds or the lock expires, so
that a fault during a refill does not leave every instance waiting ``LOCK_TIMEOUT`` for a
lock nobody holds.

The lease length adapts to the rate, as Meituan Leaf's segments do: a lease that lasted less
than ``FAST_LEASE`` seconds doubles the next one, one that lasted more than ``SLOW_LEASE``
halves it, within the configured bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from keygen.constants import (
    DEFAULT_NAMESPACE,
    GRANT_LEASE,
    REDIS_LEASE_KEY,
    REDIS_LOCK_KEY,
    SOURCE_REDIS,
)
from keygen.dispensers import redis_functions as fn
from keygen.dispensers.coalescing import Coalescer, Waiter, fit, split
from keygen.dispensers.segment import what_is_left
from keygen.errors import LayerUnavailable, NamespaceExhausted
from keygen.histogram import REFILL_BUCKETS, Histogram
from keygen.ledgers.base import Ledger
from keygen.ranges import IdRange

log = logging.getLogger(__name__)

FAST_LEASE: Final = 15 * 60.0  # seconds: a lease used up faster than this doubles the next
SLOW_LEASE: Final = 30 * 60.0  # seconds: a lease lasting longer than this halves the next
#: How long an instance that finds another instance refilling waits before looking again.
REFILL_POLL: Final = 0.005
#: What a Redis call can fail with. uvloop raises RuntimeError ("the handler is closed") for a
#: write on a connection the peer has reset; redis-py drops that connection but lets the
#: error through untranslated.
REDIS_FAILURES: Final = (RedisError, OSError, RuntimeError)
#: How often a refill lock whose release failed is released again, until it expires.
RELEASE_RETRY: Final = 0.1


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
        self,
        redis: Redis,
        ledger: Ledger,
        *,
        holder: str,
        lease_size: int,
        min_lease_size: int,
        max_lease_size: int,
        lock_timeout: float,
    ) -> None:
        self.redis = redis
        self.active_locks = 0
        self.ids_wasted = 0  # lease tails abandoned at refills (exhausted or fenced)
        self.refills = 0
        self.refill_seconds = Histogram(REFILL_BUCKETS)
        self._ledger = ledger
        self._holder = holder
        self._initial_lease = lease_size
        self._min_lease = min_lease_size
        self._max_lease = max_lease_size
        self._lock_timeout = lock_timeout
        self._batches = Coalescer(self._serve, name="Redis")
        self._background: set[asyncio.Future[None]] = set()

    async def allocate(self, namespace: str, size: int) -> IdRange:
        return await self._batches.submit(namespace, size)

    async def segment(self, namespace: str, length: int) -> IdRange:
        """A segment for this process: one carve of the shared lease, like any request."""
        return await self._batches.submit(namespace, length)

    async def _serve(self, namespace: str, batch: list[Waiter]) -> None:
        """One FCALL for the whole batch; refill and call again while the lease falls short."""
        key = REDIS_LEASE_KEY.format(namespace)
        while True:
            batch = [waiter for waiter in batch if not waiter.gave_up]
            if not batch:
                return  # every request gave up while the lease was being refilled
            total = sum(waiter.size for waiter in batch)
            reply = await self._call(fn.ALLOCATE, key, total)
            if reply[0] == "OK":
                used_after = int(reply[2])
                start = int(reply[1]) + used_after - total
                _, wasted = split(IdRange(namespace, start, start + total - 1), batch)
                self.ids_wasted += wasted
                return
            # EMPTY, FENCED or EXHAUSTED: refill (one batch per namespace is in flight, so one
            # refill too), then try again with the requests still waiting.
            try:
                await self._refill(namespace, total)
            except NamespaceExhausted as exhausted:
                if len(batch) == 1:
                    raise
                # Serve, in arrival order, the requests that fit in what is left; refuse the
                # rest. Every round installs a lease or drops at least one request...
                fitting = fit(namespace, batch, exhausted.remaining)
                if len(fitting) < len(batch):
                    batch = fitting
                    continue
                # ...unless what is left is split between the lease and the ledger, so that
                # the batch fits in neither: then one request at a time, each served or
                # refused on its own.
                for waiter in fitting:
                    try:
                        await self._serve(namespace, [waiter])
                    except NamespaceExhausted as refused:
                        waiter.fail(refused)
                return

    async def _refill(self, namespace: str, size: int) -> None:
        lock_key = REDIS_LOCK_KEY.format(namespace)
        token = secrets.token_hex(8)
        ttl_ms = max(1, int(self._lock_timeout * 1000))
        if not await self._call(fn.LOCK, lock_key, token, str(ttl_ms)):
            await asyncio.sleep(REFILL_POLL)  # another instance is installing a lease
            return
        taken_at = time.monotonic()
        self.active_locks += 1
        try:
            # Bounded by the lock's life: past it, another instance may refill too.
            async with asyncio.timeout(self._lock_timeout):
                await self._install_fresh_lease(namespace, size)
        finally:
            self.active_locks -= 1
            try:
                await self._call(fn.UNLOCK, lock_key, token)
            except LayerUnavailable as exc:
                # Left behind, the lock would keep every instance from refilling until it
                # expires: release it as soon as Redis answers again.
                log.warning("releasing the refill lock of %r: %s; retrying", namespace, exc)
                self._spawn(self._release_later(lock_key, token, taken_at + self._lock_timeout))

    async def _release_later(self, lock_key: str, token: str, expires: float) -> None:
        while time.monotonic() < expires:
            await asyncio.sleep(RELEASE_RETRY)
            try:
                await self._call(fn.UNLOCK, lock_key, token)
            except LayerUnavailable:
                continue
            return

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)  # a reference, so the task is not collected mid-way
        task.add_done_callback(self._background.discard)

    async def _install_fresh_lease(self, namespace: str, size: int) -> None:
        started = time.perf_counter()
        key = REDIS_LEASE_KEY.format(namespace)
        state = await self.peek(namespace)
        if state.grant and not state.fenced and state.left >= size:
            return  # another instance refilled it while we took the lock
        length = max(size, self._next_length(state))
        grant = await what_is_left(
            partial(self._ledger.grant, namespace, kind=GRANT_LEASE, holder=self._holder),
            namespace,
            length,
            size=size,
            elsewhere=state.left if state.grant and not state.fenced else 0,
        )
        grant_id = f"{namespace}:{grant.start}"
        reply = await self._call(
            fn.INSTALL,
            key,
            state.grant,
            grant_id,
            str(grant.start),
            str(grant.size),
            repr(time.time()),
        )
        if reply[0] == "INSTALLED":
            self.refills += 1
            self.refill_seconds.observe(time.perf_counter() - started)
            self.ids_wasted += state.left
            log.info(
                "installed lease %s..%s of %r (%s IDs)%s",
                grant.start,
                grant.end,
                namespace,
                grant.size,
                " after a fence" if state.fenced else "",
            )
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
            fn.PEEK, REDIS_LEASE_KEY.format(namespace)
        )
        return LeaseState(str(grant), int(length), int(left), float(installed_at), fenced == 1)

    async def _call(self, function: str, key: str, *args: Any) -> Any:
        """FCALL ``function``, loading the library first where the server lacks it."""
        for attempt in (1, 2):
            try:
                return await self.redis.fcall(function, 1, key, *args)
            except ResponseError as exc:
                if attempt == 1 and "function not found" in str(exc).lower():
                    await self.load_functions()
                    continue
                raise LayerUnavailable(f"Redis: {exc}") from exc
            except REDIS_FAILURES as exc:
                if not isinstance(exc, RedisTimeoutError):
                    await self._drop_idle_connections()
                raise LayerUnavailable(f"Redis: {exc}") from exc
        raise AssertionError("unreachable")

    async def _drop_idle_connections(self) -> None:
        """A connection was closed or reset under us: its idle siblings most likely were too
        (a restart, a failover, a reset partition), and each would fail one request of its
        own before redis-py noticed. Closing them now makes the next requests connect afresh."""
        with contextlib.suppress(Exception):
            await self.redis.connection_pool.disconnect(inuse_connections=False)

    async def load_functions(self) -> None:
        """Load (or replace) the function library on the current master."""
        try:
            await self.redis.function_load(fn.LIBRARY, replace=True)
        except REDIS_FAILURES as exc:
            raise LayerUnavailable(f"Redis: loading functions: {exc}") from exc

    async def ping(self) -> None:
        """A real operation of the layer: on the server the Sentinels name, it must be the
        master, and the function library must answer (loaded again where it is missing)."""
        try:
            role = await self.redis.execute_command("ROLE")  # type: ignore[no-untyped-call]
        except REDIS_FAILURES as exc:
            raise LayerUnavailable(f"Redis: {exc}") from exc
        if not role or str(role[0]) != "master":
            # A master demoted by a failover keeps its connections: drop them, so that the
            # next one is made to the master the Sentinels name now.
            await self._drop_idle_connections()
            raise LayerUnavailable(f"Redis: the server is a {role[0] if role else '?'} now")
        await self.peek(DEFAULT_NAMESPACE)

    async def aclose(self) -> None:
        await self._batches.aclose()
        background = list(self._background)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await self.redis.aclose()
