"""An open-loop load generator: requests leave at a target rate, whatever the answers do.

A closed loop (each client waits for its answer before asking again) slows down exactly
when the service does, and so hides an outage behind fewer requests. Here a request is sent
every ``1/rate`` seconds on average (Poisson arrivals from a seeded RNG), each through one of
``clients`` client objects that know every instance's URL (``AsyncKeygenClient``: a refused
or reset connection, or a 5xx, moves to the next instance; a 503 waits for its Retry-After).

Every acknowledged range is appended to ``acks.jsonl`` as it arrives (the response body plus
``requested``, ``sent_at``, ``acked_at``), every failure to ``failures.jsonl`` (``sent_at``,
``failed_at``, ``cause``), and every attempt that got no 200 (a refused connection, a 503
the client then retried) to ``attempts.jsonl``. Times are ``time.time()`` seconds, as the
nemesis records them.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import msgspec

from keygen.client import AsyncKeygenClient, KeygenAPIError

__all__ = ["LoadConfig", "LoadGenerator", "draw_size"]

DEFAULT_NAMESPACES = ("default", "orders", "users")
ACKS_FILE = "acks.jsonl"
FAILURES_FILE = "failures.jsonl"
ATTEMPTS_FILE = "attempts.jsonl"
SHED = "not sent: too many in flight"


def draw_size(rng: random.Random) -> int:
    """A request size from a mix: mostly small blocks, some large ones."""
    roll = rng.random()
    if roll < 0.6:
        return rng.randint(1, 100)
    if roll < 0.95:
        return rng.randint(100, 2000)
    return rng.randint(2000, 50_000)


@dataclass(frozen=True)
class LoadConfig:
    """What load to send.

    Args:
        urls: every instance's base URL.
        rate: requests per second to start (open loop).
        clients: client objects the requests are spread over (each keeps its own pools).
        namespaces: drawn uniformly per request.
        timeout: seconds one request may take in all, its retries and their waits included.
        retries: further attempts a client makes (next instance, or after Retry-After).
        max_in_flight: requests in flight beyond which new ones are not sent but counted as
            ``shed``, and as failed requests (a bound on the generator's own cost in a long
            stall, which must not hide the stall).

    Each client object has a connection pool of its own. httpx's pool does work in
    proportion to the requests waiting in it for every request it starts or finishes, so
    many clients, each with few requests in flight, keep the generator's CPU cost linear:
    a generator that saturates would measure itself, not the service.
    """

    urls: Sequence[str]
    rate: float = 200.0
    clients: int = 64
    namespaces: Sequence[str] = DEFAULT_NAMESPACES
    timeout: float = 10.0
    retries: int = 3
    max_in_flight: int = 1500


@dataclass
class LoadStats:
    """Running counts, for the progress display."""

    sent: int = 0
    acknowledged: int = 0
    ids: int = 0
    failed: int = 0
    shed: int = 0
    in_flight: int = 0
    sources: Counter[str] = field(default_factory=Counter)
    causes: Counter[str] = field(default_factory=Counter)
    #: Attempts that failed but were retried (some then failed for good, most succeeded).
    absorbed: Counter[str] = field(default_factory=Counter)
    #: (acked_at, source) of the latest acknowledgements, for a "last second" view.
    recent: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=20_000))

    def rate_last_second(self, now: float) -> Counter[str]:
        return Counter(source for at, source in self.recent if at >= now - 1.0)


class _CountingTransport(httpx.AsyncBaseTransport):
    """httpx's transport, noting every attempt that did not get a 200: the errors the
    client's retries absorbed are part of the story too."""

    def __init__(self, note: Callable[[str], None], max_connections: int) -> None:
        # As many connections as requests may be in flight: a request never queues for a
        # connection inside the client, where it would time out as the client's fault.
        self._inner = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=100)
        )
        self._note = note

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await self._inner.handle_async_request(request)
        except httpx.TransportError as exc:
            self._note(type(exc).__name__)
            raise
        if response.status_code != 200:
            self._note(f"http {response.status_code}")
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class LoadGenerator:
    """Sends the load of ``config`` until :meth:`stop`, recording into ``directory``."""

    def __init__(self, config: LoadConfig, directory: Path, *, seed: int = 0) -> None:
        self.config = config
        self.directory = directory
        self.rng = random.Random(seed)
        self.stats = LoadStats()
        self._stopping = asyncio.Event()
        self._acks: IO[str] | None = None
        self._failures: IO[str] | None = None
        self._attempts: IO[str] | None = None

    @property
    def acks_path(self) -> Path:
        return self.directory / ACKS_FILE

    @property
    def failures_path(self) -> Path:
        return self.directory / FAILURES_FILE

    @property
    def attempts_path(self) -> Path:
        return self.directory / ATTEMPTS_FILE

    def _attempt_failed(self, cause: str) -> None:
        self.stats.absorbed[cause] += 1
        self._write(self._attempts, {"at": time.time(), "cause": cause})

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> LoadStats:
        """Send requests until :meth:`stop`; then wait for those in flight (each is bounded
        by its client's timeout and retries)."""
        config = self.config
        self.directory.mkdir(parents=True, exist_ok=True)
        urls = list(config.urls)
        # Each client starts on another instance (it moves on only when that one fails).
        transport_clients = [
            AsyncKeygenClient(
                urls[i % len(urls) :] + urls[: i % len(urls)],
                timeout=config.timeout,
                retries=config.retries,
                transport=_CountingTransport(self._attempt_failed, config.max_in_flight),
            )
            for i in range(config.clients)
        ]
        tasks: set[asyncio.Task[None]] = set()
        with (
            self.acks_path.open("a", buffering=1) as acks,
            self.failures_path.open("a", buffering=1) as failures,
            self.attempts_path.open("a", buffering=1) as attempts,
        ):
            self._acks, self._failures, self._attempts = acks, failures, attempts
            try:
                next_at = time.monotonic()
                while not self._stopping.is_set():
                    next_at += self.rng.expovariate(config.rate)
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        try:
                            await asyncio.wait_for(self._stopping.wait(), delay)
                            break
                        except TimeoutError:
                            pass
                    if self.stats.in_flight >= config.max_in_flight:
                        # Not sent: a failure all the same (the service is stalling), so that
                        # the bound cannot hide an outage.
                        self.stats.shed += 1
                        self.stats.failed += 1
                        self.stats.causes[SHED] += 1
                        now = time.time()
                        self._write(
                            self._failures, {"sent_at": now, "failed_at": now, "cause": SHED}
                        )
                        continue
                    # Counted from now, not from when the task first runs: a loop that
                    # falls behind must see its backlog.
                    self.stats.in_flight += 1
                    client = transport_clients[self.rng.randrange(len(transport_clients))]
                    namespace = config.namespaces[self.rng.randrange(len(config.namespaces))]
                    task = asyncio.create_task(self._one(client, draw_size(self.rng), namespace))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(
                    *(c.aclose() for c in transport_clients), return_exceptions=True
                )
                self._acks = self._failures = self._attempts = None
        return self.stats

    async def _one(self, client: AsyncKeygenClient, size: int, namespace: str) -> None:
        stats = self.stats
        stats.sent += 1
        sent_at = time.time()
        cause: str | None = None
        try:
            allocated = await client.allocate(size=size, namespace=namespace)
        except KeygenAPIError as exc:
            cause = f"http {exc.status_code} {exc.code}"
        except httpx.HTTPError as exc:
            cause = type(exc).__name__
        except (OSError, ValueError, KeyError) as exc:  # a malformed answer counts too
            cause = f"{type(exc).__name__}: {exc}"
        finally:
            stats.in_flight -= 1
        now = time.time()
        if cause is not None:
            stats.failed += 1
            stats.causes[cause] += 1
            self._write(
                self._failures,
                {
                    "sent_at": sent_at,
                    "failed_at": now,
                    "cause": cause,
                    "namespace": namespace,
                    "requested": size,
                },
            )
            return
        stats.acknowledged += 1
        stats.ids += allocated.size
        stats.sources[allocated.source] += 1
        stats.recent.append((now, allocated.source))
        self._write(
            self._acks,
            {
                **msgspec.structs.asdict(allocated),
                "requested": size,
                "sent_at": sent_at,
                "acked_at": now,
            },
        )

    @staticmethod
    def _write(out: IO[str] | None, record: dict[str, Any]) -> None:
        if out is not None:
            out.write(json.dumps(record, separators=(",", ":")) + "\n")
