"""What a body-read deadline costs per request, in process: ``read_body`` with the sweeper's
deadlines (``keygen.api.deadlines``) against the same read with no deadline and with an
``asyncio.timeout`` around it, on uvloop, with a body that has already arrived (the common
case: the deadline is pure overhead there).

    .venv/bin/python benchmarks/read_body.py [--calls N] [--rounds R]

Rounds alternate the three variants; the figure is each variant's median µs per call, and
the extra cost of the two deadlines over no deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from keygen.api.allocate import read_body
from keygen.api.deadlines import ReadDeadlines

SCOPE: dict[str, Any] = {"headers": [(b"content-type", b"application/json")]}
MESSAGE = {"type": "http.request", "body": b'{"size": 1000}', "more_body": False}


async def receive() -> dict[str, Any]:
    return MESSAGE


class NoDeadline(ReadDeadlines):
    """The same calls, doing nothing: the cost of reading alone."""

    def watch(self) -> None:
        return None


async def with_asyncio_timeout(deadlines: ReadDeadlines) -> bytes:
    async with asyncio.timeout(deadlines.timeout):
        return await read_body(SCOPE, receive, 4096, deadlines)


async def measure(call: Callable[[], Awaitable[bytes]], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        await call()
    return (time.perf_counter() - started) / calls * 1e6


async def main(calls: int, rounds: int) -> None:
    sweeper, none = ReadDeadlines(10.0), NoDeadline(10.0)
    sweeper.start()
    variants: dict[str, Callable[[], Awaitable[bytes]]] = {
        "no deadline": lambda: read_body(SCOPE, receive, 4096, none),
        "sweeper (keygen)": lambda: read_body(SCOPE, receive, 4096, sweeper),
        "asyncio.timeout": lambda: with_asyncio_timeout(none),
    }
    results: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for _ in range(rounds):
            for name, call in variants.items():
                results[name].append(await measure(call, calls))
    finally:
        await sweeper.stop()
    medians = {name: statistics.median(values) for name, values in results.items()}
    for name, values in results.items():
        rounds_text = " ".join(f"{v:.2f}" for v in values)
        print(f"{name:18} median {medians[name]:6.2f} µs/call   by round: {rounds_text}")
    base = medians["no deadline"]
    print(
        f"extra per request: sweeper {medians['sweeper (keygen)'] - base:+.2f} µs, "
        f"asyncio.timeout {medians['asyncio.timeout'] - base:+.2f} µs"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100_000, help="calls per round (100000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per variant (5)")
    args = parser.parse_args()
    print("command: " + shlex.join([".venv/bin/python", "benchmarks/read_body.py", *sys.argv[1:]]))
    uvloop.run(main(args.calls, args.rounds))
