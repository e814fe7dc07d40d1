"""Concurrent HTTP load that records every acknowledged range, for the overlap checker."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from keygen.checker import Record


@dataclass
class LoadResult:
    acknowledged: list[Record] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # transport errors by type


async def run_load(
    url: str, *, clients: int, duration: float, namespaces: tuple[str, ...] = ("default",),
    sizes: tuple[int, int] = (1, 2000), seed: int = 0, stop: asyncio.Event | None = None,
    result: LoadResult | None = None,
) -> LoadResult:
    """``clients`` concurrent loops POSTing /allocate for ``duration`` seconds (or until
    ``stop``); every 200 is recorded, with the size asked for, in ``result`` as it arrives."""
    result = LoadResult() if result is None else result
    deadline = time.monotonic() + duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client_loop(rng: random.Random, http: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline and not (stop and stop.is_set()):
            size = rng.randint(*sizes)
            body = {"size": size, "namespace": rng.choice(namespaces)}
            try:
                response = await http.post("/allocate", json=body)
            except httpx.HTTPError as exc:
                result.errors[type(exc).__name__] += 1
                await asyncio.sleep(0.05)
                continue
            result.statuses[response.status_code] += 1
            if response.status_code == 200:
                result.acknowledged.append(
                    Record.from_json({**response.json(), "requested": size})
                )

    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
        await asyncio.gather(
            *(client_loop(random.Random(seed * 1000 + i), http) for i in range(clients))
        )
    return result


async def wait_for_acks(result: LoadResult, count: int, timeout: float) -> None:
    """Wait until ``result`` holds ``count`` acknowledged ranges."""
    async with asyncio.timeout(timeout):
        while len(result.acknowledged) < count:
            await asyncio.sleep(0.02)
