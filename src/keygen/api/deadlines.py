"""Deadlines for reading request bodies, enforced by one sweeper task for all requests.

A client that sends the headers of a POST but never its body would hold a task for ever, and
on SIGTERM the server would wait for it until uvicorn's graceful-shutdown timeout cut it short
with a plain 500. So a body must arrive within ``KEYGEN_BODY_TIMEOUT``.

Not ``asyncio.timeout`` around each read: arming and disarming a timer per request costs
about 6.5 µs on uvloop (``benchmarks/read_body.py``), a tenth of what a whole allocation
costs. Here a read registers its task
in a dict (under a microsecond) and a single task sweeps the dict a few times a second,
cancelling the reads that are past their deadline; the reader turns that cancellation into a
``RequestTimeout``. A deadline is thus kept to within a sweep interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger(__name__)

#: The most a deadline may be overrun: the sweeper runs at least this often.
MAX_SWEEP_INTERVAL = 0.5


class ReadDeadlines:
    """Tasks reading a body, and when each must be done."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.interval = min(MAX_SWEEP_INTERVAL, timeout / 4)
        self._readers: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._sweeper = self._loop.create_task(self._sweep())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    def watch(self) -> asyncio.Task[object] | None:
        """Start the current task's deadline; pass what it returns to :meth:`done`."""
        task = asyncio.current_task()
        if task is not None and self._loop is not None:
            self._readers[task] = self._loop.time() + self.timeout
        return task

    def done(self, task: asyncio.Task[object] | None) -> None:
        """The read is over, one way or the other."""
        if task is not None:
            self._readers.pop(task, None)

    def expired(self, task: asyncio.Task[object] | None) -> bool:
        """Whether the cancellation ``task`` just received was its deadline (and only that:
        a cancellation from elsewhere at the same time must still cancel it)."""
        if task is None or task not in self._expired:
            return False
        self._expired.discard(task)
        return task.uncancel() == 0

    async def _sweep(self) -> None:
        assert self._loop is not None
        while True:
            await asyncio.sleep(self.interval)
            now = self._loop.time()
            late = [task for task, deadline in self._readers.items() if deadline <= now]
            for task in late:
                del self._readers[task]
                self._expired.add(task)
                task.cancel()
