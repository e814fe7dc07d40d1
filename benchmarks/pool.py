"""``IdPool.next_id()``: IDs a second on one thread, from a real ``keygen serve``.

One ``keygen serve --workers 1`` on a fresh data dir (the embedded default). A pool with
blocks of ``--block`` IDs draws ``--ids`` IDs on one thread, in rounds; the figure is IDs per
second of wall time (fetches of the next block included, in the background), the median of
the rounds, against the target of 2,000,000. For scale, the same thread asking the service
for one ID per request (``KeygenClient.allocate(size=1)``) for ``--requests`` requests.

    .venv/bin/python benchmarks/pool.py [--ids 5000000 --block 100000 --rounds 5]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.allocate import keygen_server, running  # noqa: E402

from keygen.client import KeygenClient  # noqa: E402
from keygen.pool import IdPool  # noqa: E402

TARGET = 2_000_000


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", type=int, default=5_000_000, help="IDs per round (5,000,000)")
    parser.add_argument("--block", type=int, default=100_000, help="IDs per block (100,000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (5)")
    parser.add_argument("--requests", type=int, default=2000, help="one-ID requests (2000)")
    args = parser.parse_args(argv)
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    with tempfile.TemporaryDirectory(prefix="keygen-bench-pool-") as tmp:
        server = keygen_server(Path(tmp), name="keygen")
        with running([server]):
            url = f"http://127.0.0.1:{server.port}"
            rates = []
            with IdPool(url, namespace="bench", block=args.block) as pool:
                next_id = pool.next_id
                for _ in range(10_000):
                    next_id()  # the first block, and the code warm
                for round_ in range(1, args.rounds + 1):
                    started = time.perf_counter()
                    for _ in range(args.ids):
                        next_id()
                    rate = args.ids / (time.perf_counter() - started)
                    rates.append(rate)
                    print(f"round {round_}: {rate:,.0f} IDs/s from next_id()")
            with KeygenClient(url) as client:
                started = time.perf_counter()
                for _ in range(args.requests):
                    client.allocate(size=1, namespace="bench")
                per_request = args.requests / (time.perf_counter() - started)
    median = statistics.median(rates)
    print(
        f"next_id(): median {median:,.0f} IDs/s on one thread (target {TARGET:,}): "
        f"{'PASS' if median >= TARGET else 'BELOW TARGET'}"
    )
    print(f"one request per ID: {per_request:,.0f} IDs/s ({median / per_request:,.0f}x fewer)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
