"""One ``AsyncKeygenClient`` shared by many tasks: its own connection limit
(``max_connections``, 10 by default) against httpx's default pool (100 connections, 20 kept
alive), on the same bare server (``bare_app.py``), so the figure is the client's own cost.

    .venv/bin/python benchmarks/client.py [--tasks 1,10,50,200] [--duration 3] [--rounds 3]

Each task loops ``allocate(size=10)``. Rounds alternate the two pools; the figure is each
pool's median requests per second and their ratio, per number of tasks.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
# allocate.py's server helpers, imported as benchmarks.allocate from the project root.
sys.path.insert(0, str(HERE.parent))

from benchmarks.allocate import BenchmarkError, bare_server  # noqa: E402

from keygen.client import DEFAULT_MAX_CONNECTIONS, AsyncKeygenClient  # noqa: E402

POOLS = (f"keygen ({DEFAULT_MAX_CONNECTIONS} connections)", "httpx default (100/20)")


def client(url: str, pool: str) -> AsyncKeygenClient:
    if pool == POOLS[0]:
        return AsyncKeygenClient(url)
    # A transport of httpx's own defaults: what a client that does not set limits gets.
    return AsyncKeygenClient(url, transport=httpx.AsyncHTTPTransport())


async def requests_per_second(url: str, pool: str, tasks: int, duration: float) -> float:
    done = 0
    async with client(url, pool) as keygen:
        deadline = time.monotonic() + duration

        async def loop() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                await keygen.allocate(size=10)
                done += 1

        started = time.monotonic()
        await asyncio.gather(*(loop() for _ in range(tasks)))
        return done / (time.monotonic() - started)


async def main(tasks_list: list[int], duration: float, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="keygen-client-bench-") as workdir:
        server = bare_server(Path(workdir))
        server.start()
        try:
            url = f"http://127.0.0.1:{server.port}"
            for pool in POOLS:  # warm-up
                await requests_per_second(url, pool, 10, 1.0)
            print(f"{'tasks':>5}  {POOLS[0]:>26}  {POOLS[1]:>26}  ratio")
            for tasks in tasks_list:
                rates: dict[str, list[float]] = {pool: [] for pool in POOLS}
                for _ in range(rounds):
                    for pool in POOLS:
                        rates[pool].append(await requests_per_second(url, pool, tasks, duration))
                    server.check_alive()
                ours, theirs = (statistics.median(rates[pool]) for pool in POOLS)
                print(
                    f"{tasks:>5}  {ours:>20,.0f} req/s  {theirs:>20,.0f} req/s  "
                    f"{ours / theirs:.2f}x",
                    flush=True,
                )
        finally:
            server.stop()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tasks", default="1,10,50,200", help="comma-separated numbers of tasks sharing the client"
    )
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args(sys.argv[1:])
    print("$", shlex.join([".venv/bin/python", "benchmarks/client.py", *sys.argv[1:]]))
    try:
        asyncio.run(main([int(n) for n in args.tasks.split(",")], args.duration, args.rounds))
    except (BenchmarkError, httpx.HTTPError) as error:
        sys.exit(f"benchmark failed: {error}")
