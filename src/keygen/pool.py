"""IDs handed out in the client: a block from the service, used one ID at a time in process.

    pool = IdPool("http://127.0.0.1:8010", namespace="orders", block=10_000)
    order_id = pool.next_id()  # no request: the next ID of the block on hand
    ids = pool.take(500)  # a contiguous range of 500
    pool.close()

A pool holds the block it serves from and, once that block is ``prefetch`` used (a tenth,
by default), fetches the next one in the background, so in steady state ``next_id()`` never
waits for the service (what Meituan Leaf's double buffer and Didi TinyID's client do). Blocks
on hand keep serving while the service is down; a call that finds no block left waits for
the fetch up to ``timeout`` seconds, then raises ``PoolExhausted``. Every block is the
caller's alone, like any range the service acknowledged; what a pool has not handed out
when it is closed (or its process ends) is wasted, never reused, so the IDs of a pool are
unique but not dense, and increase within a block only.

``next_id()`` is safe to call from many threads: the block's IDs come from an
``itertools.count``, whose step is atomic, and a block is swapped under a lock only when it
runs out. ``take(n)`` carves its range from the spare block when that holds enough (the
block being served is never carved, so no ``next_id()`` can race it), else asks the service
for a range of its own.

``AsyncIdPool`` is the same for asyncio programs, on ``AsyncKeygenClient``.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from keygen.client import AsyncKeygenClient, KeygenClient

__all__ = ["AsyncIdPool", "IdPool", "PoolExhausted", "PoolRange"]

DEFAULT_BLOCK: Final = 10_000
DEFAULT_PREFETCH: Final = 0.1
#: Seconds between two attempts of a background fetch that failed (the client retries
#: within each attempt already).
REFETCH_PAUSE: Final = 0.5


class PoolExhausted(Exception):
    """No ID on hand, and no block could be fetched within the pool's timeout."""


@dataclass(frozen=True, slots=True)
class PoolRange:
    """IDs ``start`` to ``end``, both included, handed out by a pool."""

    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start + 1

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.end + 1))


class _Block:
    """A block being served: its IDs come from ``ids`` up to ``end``; past ``refill_at`` the
    next block is fetched."""

    __slots__ = ("end", "ids", "refill_at")

    def __init__(self, start: int, end: int, prefetch: float) -> None:
        self.ids = itertools.count(start)
        self.end = end
        self.refill_at = start + int((end - start + 1) * prefetch)


class _Pool:
    """What both pools hold: their settings, the block being served and the spare one."""

    def __init__(self, namespace: str, block: int, prefetch: float, timeout: float) -> None:
        if block < 1:
            raise ValueError(f"block must be at least 1, got {block}")
        if not 0.0 <= prefetch < 1.0:
            raise ValueError(f"prefetch must be within [0, 1), got {prefetch}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.namespace, self.block = namespace, block
        self.prefetch, self.timeout = prefetch, timeout
        self._current = _Block(1, 0, prefetch)  # empty: the first call fetches
        self._spare: PoolRange | None = None
        self._closed = False


class IdPool(_Pool):
    """IDs of ``namespace`` from blocks of ``block`` IDs; thread-safe.

    Args:
        urls: one instance's URL or several (``KeygenClient`` tries the next on a failure).
        prefetch: the part of a block used when the next is fetched in the background.
        timeout: seconds a call waits for a block when none is on hand.
        client: a ``KeygenClient`` to use (and not close); else one is made from ``urls``
            and ``client_options`` (``api_key``, ``verify``, ...).
    """

    def __init__(
        self,
        urls: str | Sequence[str] = "http://127.0.0.1:8010",
        *,
        namespace: str = "default",
        block: int = DEFAULT_BLOCK,
        prefetch: float = DEFAULT_PREFETCH,
        timeout: float = 30.0,
        client: KeygenClient | None = None,
        **client_options: Any,
    ) -> None:
        super().__init__(namespace, block, prefetch, timeout)
        self._own_client = client is None
        self._client = client if client is not None else KeygenClient(urls, **client_options)
        self._lock = threading.Lock()
        #: Notified when a spare block comes, a block is swapped in, or the pool closes.
        self._changed = threading.Condition(self._lock)
        self._wanted = threading.Event()  # the fetcher's signal
        #: The last error of the background fetch, until a fetch works again.
        self.last_error: Exception | None = None
        self._fetcher = threading.Thread(target=self._fetch_loop, name="keygen-pool", daemon=True)
        self._fetcher.start()
        self._wanted.set()  # the first block, now

    def next_id(self) -> int:
        """The next ID of the block on hand (fetching one first when none is left).

        Raises:
            PoolExhausted: no block on hand and none fetched within ``timeout``.
        """
        block = self._current
        value = next(block.ids)
        if value <= block.end:
            if value == block.refill_at:
                self._wanted.set()
            return value
        return self._next_slow()

    def _next_slow(self) -> int:
        deadline = time.monotonic() + self.timeout
        with self._lock:
            while True:
                block = self._current
                value = next(block.ids)
                if value <= block.end:  # a fresh block (or another thread swapped one in)
                    if value == block.refill_at:
                        self._wanted.set()
                    return value
                if self._spare is None:
                    # Woken by a spare block or by another thread swapping one in: this
                    # thread then draws from that block, it does not wait for a spare.
                    self._wait(deadline, swapped_from=block)
                    continue
                spare, self._spare = self._spare, None
                self._current = _Block(spare.start, spare.end, self.prefetch)
                self._changed.notify_all()  # threads waiting in here draw from it

    def take(self, n: int) -> PoolRange:
        """``n`` consecutive IDs: carved from the spare block when it holds enough, else a
        range of their own from the service.

        Raises:
            ValueError: ``n`` is below 1.
            PoolExhausted, KeygenError: as ``next_id``; the service's errors for a range of
                its own.
        """
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        if n <= self.block:
            deadline = time.monotonic() + self.timeout
            with self._lock:
                self._wait(deadline)
                spare = self._spare
                assert spare is not None
                if n <= spare.size:  # else the spare stays for next_id, and n is asked for
                    carved = PoolRange(spare.start, spare.start + n - 1)
                    self._spare = PoolRange(carved.end + 1, spare.end) if n < spare.size else None
                    if self._spare is None:
                        self._wanted.set()
                    return carved
        got = self._client.allocate(size=n, namespace=self.namespace)
        return PoolRange(got.start, got.end)

    def _wait(self, deadline: float, swapped_from: _Block | None = None) -> None:
        """Wait (the lock held) for a spare block, or for another thread to swap in a block
        other than ``swapped_from``, asking the fetcher for a block each time it wakes
        without one (a spare another thread took must be replaced), until ``deadline``.

        Raises:
            PoolExhausted: the pool closed, or ``deadline`` passed.
        """
        while (
            not self._closed
            and self._spare is None
            and (swapped_from is None or self._current is swapped_from)
        ):
            self._wanted.set()
            left = deadline - time.monotonic()
            if left <= 0:
                why = f": {self.last_error}" if self.last_error is not None else ""
                raise PoolExhausted(
                    f"no block of {self.namespace!r} within {self.timeout:g} s{why}"
                )
            self._changed.wait(left)
        if self._closed:
            raise PoolExhausted("the pool is closed")

    def _fetch_loop(self) -> None:
        while True:
            self._wanted.wait()
            with self._lock:
                if self._closed:
                    return
                self._wanted.clear()
                if self._spare is not None:
                    continue
            try:
                got = self._client.allocate(size=self.block, namespace=self.namespace)
            except Exception as exc:  # kept for the caller who waits; tried again
                self.last_error = exc
                self._wanted.set()
                with self._lock:
                    if self._changed.wait_for(lambda: self._closed, REFETCH_PAUSE):
                        return
                continue
            with self._lock:
                self.last_error = None
                self._spare = PoolRange(got.start, got.end)
                self._changed.notify_all()

    def close(self) -> None:
        """Stop fetching; the IDs not handed out are wasted. Calls waiting are woken with
        ``PoolExhausted``."""
        with self._lock:
            self._closed = True
            self._changed.notify_all()
        self._wanted.set()
        self._fetcher.join(self.timeout + 5)
        if self._own_client:
            self._client.close()

    def __enter__(self) -> IdPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncIdPool(_Pool):
    """``IdPool`` for asyncio: ``await pool.next_id()``, ``await pool.take(n)``; one event
    loop. Arguments as ``IdPool``'s, with an ``AsyncKeygenClient``."""

    def __init__(
        self,
        urls: str | Sequence[str] = "http://127.0.0.1:8010",
        *,
        namespace: str = "default",
        block: int = DEFAULT_BLOCK,
        prefetch: float = DEFAULT_PREFETCH,
        timeout: float = 30.0,
        client: AsyncKeygenClient | None = None,
        **client_options: Any,
    ) -> None:
        super().__init__(namespace, block, prefetch, timeout)
        self._own_client = client is None
        self._client = client if client is not None else AsyncKeygenClient(urls, **client_options)
        self._fetch: asyncio.Task[PoolRange] | None = None
        #: Held while the spare block is taken: two coroutines must never both take it.
        self._swapping = asyncio.Lock()

    async def next_id(self) -> int:
        block = self._current
        value = next(block.ids)
        if value <= block.end:
            if value == block.refill_at:
                self._start_fetch()
            return value
        async with self._swapping:  # one coroutine swaps; the others then draw from its block
            while True:
                block = self._current
                value = next(block.ids)
                if value <= block.end:
                    if value == block.refill_at:
                        self._start_fetch()
                    return value
                spare = await self._take_spare()
                self._current = _Block(spare.start, spare.end, self.prefetch)

    async def take(self, n: int) -> PoolRange:
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        if n > self.block:
            got = await self._client.allocate(size=n, namespace=self.namespace)
            return PoolRange(got.start, got.end)
        async with self._swapping:
            spare = await self._take_spare()
            if n <= spare.size:
                carved = PoolRange(spare.start, spare.start + n - 1)
                if carved.end < spare.end:
                    self._spare = PoolRange(carved.end + 1, spare.end)
                else:
                    self._start_fetch()
                return carved
            self._spare = spare  # too small for n: kept for next_id, and n is asked for
        got = await self._client.allocate(size=n, namespace=self.namespace)
        return PoolRange(got.start, got.end)

    def _start_fetch(self) -> None:
        if self._spare is None and self._fetch is None and not self._closed:
            self._fetch = asyncio.get_running_loop().create_task(self._fetch_block())

    async def _fetch_block(self) -> PoolRange:
        got = await self._client.allocate(size=self.block, namespace=self.namespace)
        return PoolRange(got.start, got.end)

    async def _take_spare(self) -> PoolRange:
        """The spare block, now its caller's (waiting for a fetch up to ``timeout``); with
        ``_swapping`` held."""
        if self._closed:
            raise PoolExhausted("the pool is closed")
        if self._spare is None:
            self._start_fetch()
            fetch = self._fetch
            assert fetch is not None
            try:
                async with asyncio.timeout(self.timeout):
                    spare = await asyncio.shield(fetch)
            except TimeoutError:
                raise PoolExhausted(
                    f"no block of {self.namespace!r} within {self.timeout:g} s"
                ) from None
            except Exception as exc:
                raise PoolExhausted(f"no block of {self.namespace!r}: {exc}") from exc
            finally:
                if fetch.done():
                    self._fetch = None
            self._spare = spare
        spare, self._spare = self._spare, None
        return spare

    async def aclose(self) -> None:
        self._closed = True
        fetch, self._fetch = self._fetch, None
        if fetch is not None:
            fetch.cancel()
            await asyncio.gather(fetch, return_exceptions=True)
        if self._own_client:
            await self._client.aclose()

    async def __aenter__(self) -> AsyncIdPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
