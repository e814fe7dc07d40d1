"""What counting one allocation costs on the hot path, three ways, in one run:

- **keygen**: ``keygen.metrics.Counters`` (a memory-mapped file per worker, shared by all the
  instance's workers: what the service uses);
- **prometheus multiprocess**: prometheus_client's multiprocess mode (a counter by source,
  the IDs counter and the latency histogram), the library's own way of sharing figures
  between workers;
- **per process**: plain Python integers, what the service did before its figures were
  shared (each worker counted alone).

    .venv/bin/python benchmarks/metrics.py [--calls 200000] [--rounds 5]

Each variant runs in a process of its own (prometheus_client picks its value class when it
is first imported). The figure is the best round's nanoseconds per recorded allocation, and
the ratio to the per-process figure.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile

VARIANTS = ("per process", "keygen", "prometheus multiprocess")

#: One allocation recorded each way: a success by source, its IDs, its latency.
SETUP = {
    "per process": """
import bisect
BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
          1.0, 2.5, 5.0, 10.0, 30.0)
class PerProcess:
    def __init__(self):
        self.total = self.ids = self.count = 0
        self.by_source = {}
        self.latency_sum = 0.0
        self.buckets = [0] * (len(BOUNDS) + 1)
        self.recent = [0.0] * 4096
    def record_success(self, source, size, seconds):
        self.total += 1
        self.ids += size
        self.by_source[source] = self.by_source.get(source, 0) + 1
        self.latency_sum += seconds
        self.buckets[bisect.bisect_left(BOUNDS, seconds)] += 1
        self.recent[self.count % 4096] = seconds
        self.count += 1
counters = PerProcess()
record = lambda: counters.record_success("sqlite", 1000, 0.0003)
""",
    "keygen": """
from pathlib import Path
from keygen.metrics import Counters
counters = Counters(Path(RUN_DIR))
def record():
    counters.record_success("sqlite", 1000, 0.0003)
    counters.record_response("/allocate", 200)
""",
    "prometheus multiprocess": """
import os
os.environ["PROMETHEUS_MULTIPROC_DIR"] = RUN_DIR
from prometheus_client import Counter, Histogram
from keygen.metrics.layout import LATENCY_BUCKETS
allocations = Counter("keygen_allocations", "", ["outcome", "source"])
success = allocations.labels("success", "sqlite")  # a child looked up once, not per call
ids = Counter("keygen_ids_allocated", "")
latency = Histogram("keygen_allocation_duration_seconds", "", buckets=LATENCY_BUCKETS)
responses = Counter("keygen_http_responses", "", ["endpoint", "status"]).labels("/allocate", "200")
def record():
    success.inc()
    ids.inc(1000)
    latency.observe(0.0003)
    responses.inc()
""",
}

CHILD = """
import sys, timeit
RUN_DIR = sys.argv[1]
{setup}
calls, rounds = int(sys.argv[2]), int(sys.argv[3])
record()
print(min(timeit.repeat(record, number=calls, repeat=rounds)) / calls * 1e9)
"""


def measure(variant: str, calls: int, rounds: int) -> float:
    with tempfile.TemporaryDirectory(prefix="keygen-metrics-bench-") as run_dir:
        code = CHILD.format(setup=SETUP[variant])
        out = subprocess.run(
            [sys.executable, "-c", code, run_dir, str(calls), str(rounds)],
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        ).stdout
    return float(out.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=200_000, help="calls per round (200000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best counts (5)")
    args = parser.parse_args(argv)
    print(f"command: {shlex.join(sys.orig_argv)}")
    print(
        f"python:  {sys.version.split()[0]}, nproc {len(os.sched_getaffinity(0))}, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    figures = {variant: measure(variant, args.calls, args.rounds) for variant in VARIANTS}
    base = figures["per process"]
    for variant, ns in figures.items():
        print(f"{variant:<26}{ns:>8.0f} ns per allocation   {ns / base:5.2f}x per process")
    print(
        f"prometheus multiprocess / keygen: "
        f"{figures['prometheus multiprocess'] / figures['keygen']:.1f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
