"""Concurrent HTTP load that records every acknowledged range, for the overlap checker."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from keygen.checker import Record


@dataclass(frozen=True)
class Outcome:
    """One answered request, as a ``timed`` load records it."""

    status: int
    seconds: float  # from sending the request to its parsed answer
    finished_at: float  # time.monotonic() then
    retry_after: str | None
    code: str | None  # the error code of a non-200 answer


@dataclass
class LoadResult:
    acknowledged: list[Record] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # transport errors by type
    outcomes: list[Outcome] = field(default_factory=list)  # every answer, when timed


async def run_load(
    url: str,
    *,
    clients: int,
    duration: float,
    namespaces: tuple[str, ...] = ("default",),
    sizes: tuple[int, int] = (1, 2000),
    seed: int = 0,
    stop: asyncio.Event | None = None,
    result: LoadResult | None = None,
    timeout: float = 30.0,
    timed: bool = False,
    refusal_pause: float = 0.0,
) -> LoadResult:
    """``clients`` concurrent loops POSTing /allocate for ``duration`` seconds (or until
    ``stop``); every 200 is recorded, with the size asked for, in ``result`` as it arrives.

    ``timeout`` bounds each request (a slower one counts as a transport error). With
    ``timed``, every answer's body must be JSON and its :class:`Outcome` is recorded too. A
    client waits ``refusal_pause`` seconds after each non-200 answer.
    """
    result = LoadResult() if result is None else result
    deadline = time.monotonic() + duration

    async def client_loop(rng: random.Random) -> None:
        # A connection of its own, as a separate client would have: one pool shared by
        # every loop costs httpcore O(connections x queued requests) per request, which
        # at 50 loops made this load, not the service, the bottleneck.
        async with httpx.AsyncClient(base_url=url, timeout=timeout) as http:
            await requests(rng, http)

    async def requests(rng: random.Random, http: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline and not (stop and stop.is_set()):
            size = rng.randint(*sizes)
            body = {"size": size, "namespace": rng.choice(namespaces)}
            started = time.monotonic()
            try:
                response = await http.post("/allocate", json=body)
            except httpx.HTTPError as exc:
                result.errors[type(exc).__name__] += 1
                await asyncio.sleep(0.05)
                continue
            result.statuses[response.status_code] += 1
            ok = response.status_code == 200
            answer: dict[str, Any] = response.json() if ok or timed else {}
            if timed:
                result.outcomes.append(
                    Outcome(
                        response.status_code,
                        time.monotonic() - started,
                        time.monotonic(),
                        response.headers.get("retry-after"),
                        None if ok else answer.get("error", {}).get("code"),
                    )
                )
            if ok:
                result.acknowledged.append(Record.from_json({**answer, "requested": size}))
            elif refusal_pause:
                await asyncio.sleep(refusal_pause)

    await asyncio.gather(*(client_loop(random.Random(seed * 1000 + i)) for i in range(clients)))
    return result


async def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> None:
    """Poll ``predicate`` every ``interval`` seconds until it holds; TimeoutError after
    ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(interval)


async def wait_for_acks(result: LoadResult, count: int, timeout: float) -> None:
    """Wait until ``result`` holds ``count`` acknowledged ranges; on a timeout, fail with
    what the load got instead."""
    try:
        await wait_until(lambda: len(result.acknowledged) >= count, timeout, interval=0.02)
    except TimeoutError:
        raise AssertionError(
            f"{len(result.acknowledged)} of {count} acknowledgements in {timeout:g}s; "
            f"statuses {dict(result.statuses)}, transport errors {dict(result.errors)}"
        ) from None
