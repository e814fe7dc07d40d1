"""The open-loop generator: ``POST /allocate`` on a fixed schedule over a pool of keep-alive
HTTP/1.1 connections, each carrying one request at a time.

A raw :class:`asyncio.Protocol` on uvloop, with httptools parsing the answers: an HTTP
client library costs tens of microseconds a request, and a generator that saturates before
the server measures itself. A request that finds no free connection waits in a queue for
the next one; its latency still counts from its scheduled time. Above what one process can
send, :mod:`keygen.bench.parallel` splits the schedule between processes (request ``i`` goes
to process ``i % P``, so that together they keep the one schedule).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools
import msgspec
import uvloop

from keygen.bench import BenchError
from keygen.bench.stats import StepResult, requests_in

__all__ = ["Step", "Timeline", "run_step"]

#: Seconds between looks for requests that waited too long.
_WATCH_INTERVAL = 0.05


class _Answer(msgspec.Struct):
    source: str = "(none)"


_decode_answer = msgspec.json.Decoder(_Answer).decode


@dataclass(frozen=True)
class Step:
    """One step: where, what, how fast, for how long.

    ``duration`` None runs until ``stop`` is set (the failover scenarios); ``part`` and
    ``parts`` pick this process's share of the schedule; ``t0`` (``time.monotonic()``,
    shared by every process of a machine) is when request 0 is due.
    """

    url: str
    rate: float
    duration: float | None
    target: str = "target"
    connections: int = 50
    size: int = 1000
    namespace: str = "default"
    api_key: str | None = None
    timeout: float = 10.0
    t0: float | None = None
    #: Wait out the last millisecond before a request is due by yielding, not by a timer
    #: (a timer wakes up to a millisecond late); costs the generator a busy core.
    precise: bool = True
    part: int = 0
    parts: int = 1

    def request(self) -> bytes:
        address = urlsplit(self.url)
        body = msgspec.json.encode({"size": self.size, "namespace": self.namespace})
        headers = [
            f"POST {address.path.rstrip('/')}/allocate HTTP/1.1",
            f"Host: {address.netloc}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
        ]
        if self.api_key:
            headers.append(f"Authorization: Bearer {self.api_key}")
        return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


class Timeline:
    """Every answer's time (``time.monotonic()``) and source (None: failed), in order; the
    failover scenarios read it while the step runs (appends are atomic under the GIL)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.sources: list[str | None] = []

    def add(self, at: float, source: str | None) -> None:
        self.times.append(at)
        self.sources.append(source)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; ``scheduled`` is its request's due time while busy."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.body = b""
        self.scheduled: float | None = None
        self.sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, scheduled: float, now: float) -> None:
        assert self.transport is not None
        self.scheduled, self.sent_at, self.body = scheduled, now, b""
        self.transport.write(self.run.request)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.run.failed(self, "bad response")

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.run.answered(self, self.parser.get_status_code(), self.body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.lost(self)


class _Run:
    """One process's share of a step, on one event loop."""

    def __init__(self, step: Step, timeline: Timeline | None, stop: threading.Event | None):
        self.step = step
        self.request = step.request()
        self.timeline = timeline
        self.stop = stop
        self.result = StepResult(step.target, step.rate, step.duration or 0.0)
        self.free: deque[_Connection] = deque()  # FIFO: every connection stays warm
        self.waiting: deque[float] = deque()
        self.busy: set[_Connection] = set()
        self.pending = 0  # scheduled, not yet answered or failed
        self.last_answer = 0.0
        self.closing = False
        self.reconnecting: set[asyncio.Task[None]] = set()  # held: the loop keeps weak ones
        address = urlsplit(step.url)
        self.host, self.port = address.hostname or "127.0.0.1", address.port or 80

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(lambda: _Connection(self), self.host, self.port)
        except OSError as exc:
            raise BenchError(f"cannot connect to {self.step.url}: {exc}") from exc
        self._take_next(conn)

    async def reconnect(self) -> None:
        """A lost connection is replaced, retried while the target refuses (the load goes on)."""
        while not self.closing:
            try:
                await self.connect()
                return
            except BenchError:
                await asyncio.sleep(0.05)

    def dispatch(self, scheduled: float) -> None:
        self.result.scheduled += 1
        self.pending += 1
        if self.free:
            now = time.monotonic()
            self.result.send_lag.record(max(0.0, now - scheduled))
            conn = self.free.popleft()
            self.busy.add(conn)
            conn.send(scheduled, now)
        else:
            self.waiting.append(scheduled)

    def _take_next(self, conn: _Connection) -> None:
        if self.waiting:
            self.busy.add(conn)
            conn.send(self.waiting.popleft(), time.monotonic())
        else:
            self.free.append(conn)

    def _done(self, conn: _Connection) -> tuple[float, float]:
        now = time.monotonic()
        scheduled = conn.scheduled if conn.scheduled is not None else now
        conn.scheduled = None
        self.busy.discard(conn)
        self.pending -= 1
        return now, scheduled

    def answered(self, conn: _Connection, status: int, body: bytes) -> None:
        if conn.scheduled is None:
            return  # an answer nobody asked for (after a timeout): ignored
        now, scheduled = self._done(conn)
        result = self.result
        result.responses += 1
        result.statuses[str(status)] += 1
        self.last_answer = now
        source: str | None = None
        if 200 <= status < 300:
            result.ok += 1
            result.latency.record(now - scheduled)
            result.service.record(now - conn.sent_at)
            try:
                source = _decode_answer(body).source
            except msgspec.DecodeError:
                source = "(unreadable)"
            result.sources[source] += 1
        if self.timeline is not None:
            self.timeline.add(now, source)
        if conn.parser.should_keep_alive():
            self._take_next(conn)
        elif conn.transport is not None:
            conn.transport.close()  # lost() replaces it

    def failed(self, conn: _Connection, why: str) -> None:
        if conn.scheduled is not None:
            now, _ = self._done(conn)
            self.result.errors[why] += 1
            if self.timeline is not None:
                self.timeline.add(now, None)
        if conn.transport is not None:
            conn.transport.abort()

    def lost(self, conn: _Connection) -> None:
        if conn.scheduled is not None:
            self.failed(conn, "connection closed")
        if conn in self.free:
            self.free.remove(conn)
        if not self.closing:
            task = asyncio.get_running_loop().create_task(self.reconnect())
            self.reconnecting.add(task)
            task.add_done_callback(self.reconnecting.discard)

    def expire(self) -> None:
        """Fail whatever waited longer than the step's timeout (queued or in flight)."""
        now = time.monotonic()
        limit = self.step.timeout
        while self.waiting and now - self.waiting[0] > limit:
            self.waiting.popleft()
            self.pending -= 1
            self.result.errors["timeout (never sent)"] += 1
            if self.timeline is not None:
                self.timeline.add(now, None)
        for conn in [c for c in self.busy if now - c.sent_at > limit]:
            self.failed(conn, "timeout")

    def _stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    async def run(self) -> StepResult:
        step = self.step
        await asyncio.gather(*(self.connect() for _ in range(step.connections)))
        t0 = step.t0 if step.t0 is not None else time.monotonic()
        total = math.inf if step.duration is None else requests_in(step.rate, step.duration)
        i, next_watch = step.part, t0
        while i < total and not self._stopped():
            now = time.monotonic()
            # Everything due by now leaves now: the timer wakes late by up to a millisecond.
            while i < total and t0 + i / step.rate <= now:
                self.dispatch(t0 + i / step.rate)
                i += step.parts
            if now >= next_watch:
                self.expire()
                next_watch = now + _WATCH_INTERVAL
            delay = t0 + i / step.rate - time.monotonic()
            await asyncio.sleep(_nap(delay) if step.precise else max(0.0, delay))
        # The backlog drains (and counts): a target that fell behind answers after the end.
        while self.pending > 0:
            self.expire()
            await asyncio.sleep(0.005)
        self.closing = True
        for conn in [*self.free, *self.busy]:
            if conn.transport is not None:
                conn.transport.close()
        # The schedule's own span (n requests, one every 1/rate s) at least: a target that
        # keeps up achieves exactly the offered rate, one that falls behind stretches it.
        span = (total if step.duration is not None else i - step.part) / step.rate
        self.result.elapsed = max(span, self.last_answer - t0)
        if step.duration is None:
            self.result.duration = span
        return self.result


def _nap(delay: float) -> float:
    """How long to sleep for a request due in ``delay`` seconds. uvloop's timers count whole
    milliseconds and wake up to one late; a wait shorter than ``_SPIN`` is done in zero-second
    sleeps (still serving answers), so that the generator's lateness stays out of the latency
    it reports."""
    return delay - _SPIN if delay > _SPIN else 0.0


_SPIN = 0.0012


def run_step(
    step: Step, timeline: Timeline | None = None, stop: threading.Event | None = None
) -> StepResult:
    """Run one process's share of ``step`` on a fresh uvloop loop (in this thread)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_Run(step, timeline, stop).run())
