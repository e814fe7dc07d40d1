"""Redis mode: the service's ``POST /allocate`` against ``redis-benchmark`` calling the same
Redis function, and against the embedded default.

What it answers: how much of Redis's speed does the service keep, and what does Redis mode
cost per request compared with the embedded default? One run starts a private topology
(``LocalCluster``: a Redis master, 2 replicas, 3 Sentinels and the PostgreSQL ledger) and two
services, then, at each concurrency, alternates three measurements (service-redis,
redis-benchmark, embedded, service-redis, ...):

* service-redis: ``keygen serve --workers 1`` with the cluster's environment (source
  ``redis_sentinel``), loaded by ``wrk`` with N connections POSTing ``{"size": 1000}``;
* redis-benchmark: N clients calling ``FCALL keygen_allocate_v2 1 keygen:lease:bench 1000``
  (``fn.ALLOCATE``, whatever the library's version) on the current master, the very function
  the service calls once per segment (once per allocation before segments), on a lease
  the service installed;
* embedded: ``keygen serve --workers 1`` with no Redis or PostgreSQL setting and a fresh
  ``KEYGEN_DATA_DIR`` (source ``sqlite``), under the same wrk load.

Redis leases are 10**12 IDs (``KEYGEN_REDIS_LEASE_SIZE``, ``_MIN_``, ``_MAX_``), so no refill
happens during a run; the embedded service keeps its defaults. The figures are medians over
the rounds. A run fails loudly (exit 1) on any wrk socket error or non-2xx response, an
allocation not counted or served by another layer, a redis-benchmark error or a call that did
not advance the lease, or a failover during the run.

    .venv/bin/python benchmarks/redis_mode.py [--concurrency 8,50 --duration 10 --rounds 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# allocate.py's server and wrk helpers, imported as benchmarks.allocate from the project root.
sys.path.insert(0, str(HERE.parent))

import asyncpg  # noqa: E402
import redis  # noqa: E402
from benchmarks.allocate import (  # noqa: E402
    ALLOCATION_KEYS,
    HOST,
    REQUEST_BODY,
    WRK_SCRIPT,
    BenchmarkError,
    Load,
    Server,
    WrkRun,
    _request,
    _stop_group,
    check_counts,
    ensure_wrk,
    interrupts_deferred,
    keygen_server,
    run_benchmark,
)

from keygen.cluster.binaries import find_postgres_bin_dir  # noqa: E402
from keygen.cluster.processes import _stat_fields  # noqa: E402
from keygen.cluster.topology import LocalCluster  # noqa: E402
from keygen.constants import LEASE_USED, REDIS_LEASE_KEY  # noqa: E402
from keygen.dispensers import redis_functions as fn  # noqa: E402
from keygen.errors import ClusterError  # noqa: E402

SERVICE, REDIS_BENCHMARK, EMBEDDED = "service-redis", "redis-benchmark", "embedded"
TARGETS = (SERVICE, REDIS_BENCHMARK, EMBEDDED)
SOURCES = {SERVICE: "redis_sentinel", EMBEDDED: "sqlite"}
SIZE: int = json.loads(REQUEST_BODY)["size"]
BENCH_NAMESPACE = "bench"
BENCH_KEY = REDIS_LEASE_KEY.format(BENCH_NAMESPACE)
LEASE = 10**12  # IDs per Redis lease: 10**9 allocations of 1000, no refill during a run
LEASE_SETTINGS = (
    "KEYGEN_REDIS_LEASE_SIZE",
    "KEYGEN_REDIS_MIN_LEASE_SIZE",
    "KEYGEN_REDIS_MAX_LEASE_SIZE",
)
CLUSTER_TIMEOUT = 120.0  # seconds for the topology to come up (initdb included)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sample:
    """One measurement of one target; latencies in milliseconds."""

    target: str
    clients: int
    round: int
    rps: float
    requests: int
    latency_ms: dict[str, float]  # mean, p50, p99
    checked: str  # what was verified beyond "no error"
    worker_cpu_us: float | None = None  # the service's CPU time per request
    master_busy: float | None = None  # share of one CPU the Redis master used

    @classmethod
    def of_wrk(cls, run: WrkRun, clients: int, checked: str, cpu: Cpu) -> Sample:
        latency = {k: run.latency_ms[k] for k in ("mean", "p50", "p99")}
        return cls(
            run.target,
            clients,
            run.round,
            run.rps,
            run.requests,
            latency,
            checked,
            worker_cpu_us=round(1e6 * cpu.seconds(0) / run.requests, 1),
            master_busy=cpu.busy(1),
        )


class Cpu:
    """CPU time (user + system, every thread) the given processes use between creation and
    :meth:`stop`. Divided by the requests, the service worker's says what a request costs it,
    whatever the neighbours take; the Redis master's share of one CPU says whether Redis was
    the bottleneck."""

    def __init__(self, *pids: int | None) -> None:
        self.pids = pids
        self.started, self.start = time.monotonic(), self._used()
        self.wall, self.end = 0.0, self.start

    def _used(self) -> list[float | None]:
        used: list[float | None] = []
        for pid in self.pids:
            fields = _stat_fields(pid) if pid is not None else None
            used.append((int(fields[11]) + int(fields[12])) / CLOCK_TICKS if fields else None)
        return used

    def stop(self) -> None:
        self.wall, self.end = time.monotonic() - self.started, self._used()

    def seconds(self, index: int) -> float:
        start, end = self.start[index], self.end[index]
        if start is None or end is None:
            raise BenchmarkError(f"process {self.pids[index]} is gone")
        return end - start

    def busy(self, index: int) -> float | None:
        if index >= len(self.pids) or self.pids[index] is None:
            return None
        return round(self.seconds(index) / self.wall, 3)


@dataclass
class Level:
    """Every sample at one concurrency."""

    clients: int
    samples: dict[str, list[Sample]] = field(default_factory=lambda: {t: [] for t in TARGETS})

    def rps(self, target: str) -> float:
        return statistics.median(s.rps for s in self.samples[target])

    def latency(self, target: str, key: str) -> float:
        return statistics.median(s.latency_ms[key] for s in self.samples[target])

    def worker_cpu_us(self, target: str) -> float | None:
        measured = [s.worker_cpu_us for s in self.samples[target] if s.worker_cpu_us is not None]
        return statistics.median(measured) if measured else None

    def master_busy(self, target: str) -> float | None:
        measured = [s.master_busy for s in self.samples[target] if s.master_busy is not None]
        return statistics.median(measured) if measured else None

    def ratio(self, target: str, other: str) -> float:
        return self.rps(target) / self.rps(other)

    def ratios_by_round(self, target: str, other: str) -> list[float]:
        pairs = zip(self.samples[target], self.samples[other], strict=True)
        return [round(a.rps / b.rps, 3) for a, b in pairs]

    def overhead_us(self) -> dict[str, float]:
        """What Redis mode adds to each request, against the embedded default, in µs."""
        us = {
            f"{key}_latency": 1000 * (self.latency(SERVICE, key) - self.latency(EMBEDDED, key))
            for key in ("mean", "p50")
        }
        # One saturated worker: 1/throughput is the worker's time per request, the part of
        # the latency that is not queueing (mean latency ~ clients x that, by Little's law).
        us["per_request"] = 1e6 / self.rps(SERVICE) - 1e6 / self.rps(EMBEDDED)
        service_cpu, embedded_cpu = self.worker_cpu_us(SERVICE), self.worker_cpu_us(EMBEDDED)
        if service_cpu is not None and embedded_cpu is not None:  # always, for a service
            us["worker_cpu"] = service_cpu - embedded_cpu
        return {key: round(value, 1) for key, value in us.items()}

    def as_dict(self) -> dict[str, Any]:
        return {
            "clients": self.clients,
            "median": {
                t: {
                    "rps": round(self.rps(t), 1),
                    **{f"{k}_ms": self.latency(t, k) for k in ("mean", "p50", "p99")},
                    "worker_cpu_us": self.worker_cpu_us(t),
                    "master_busy": self.master_busy(t),
                }
                for t in TARGETS
            },
            "ratio_service_redis_benchmark": round(self.ratio(SERVICE, REDIS_BENCHMARK), 3),
            "ratio_service_redis_benchmark_by_round": self.ratios_by_round(
                SERVICE, REDIS_BENCHMARK
            ),
            "ratio_service_redis_embedded": round(self.ratio(SERVICE, EMBEDDED), 3),
            "ratio_service_redis_embedded_by_round": self.ratios_by_round(SERVICE, EMBEDDED),
            "redis_mode_overhead_us": self.overhead_us(),
        }


# --- the services --------------------------------------------------------------------------


def services(workdir: Path, cluster: LocalCluster) -> list[Server]:
    """Keygen in Redis mode (the cluster's environment, huge leases), and the embedded
    default, each with its own working and data directory."""
    (workdir / SERVICE).mkdir()
    (workdir / EMBEDDED).mkdir()
    redis_mode = keygen_server(workdir / SERVICE)
    env = {**redis_mode.env, **cluster.env(), **dict.fromkeys(LEASE_SETTINGS, str(LEASE))}
    return [
        replace(redis_mode, name=SERVICE, env=env),
        replace(keygen_server(workdir / EMBEDDED), name=EMBEDDED),
    ]


def allocate_once(server: Server, namespace: str | None = None) -> None:
    """One ``POST /allocate`` by hand: a 200 with an allocation from the expected layer."""
    body = (
        REQUEST_BODY
        if namespace is None
        else json.dumps({"size": SIZE, "namespace": namespace}).encode()
    )
    status, document = _request(server.port, "POST", "/allocate", body)
    source = SOURCES[server.name]
    if (
        status != 200
        or not isinstance(document, dict)
        or set(document) != ALLOCATION_KEYS
        or document["source"] != source
        or document["size"] != SIZE
    ):
        raise BenchmarkError(
            f"{server.name}: POST /allocate should be served by {source!r}, "
            f"it answered {status} {document!r}{server.log_tail()}"
        )


def counters(server: Server) -> tuple[dict[str, int], int]:
    """The service's (successful allocations by source, failed allocations) so far."""
    status, document = _request(server.port, "GET", "/metrics")
    if status != 200 or not isinstance(document, dict):
        raise BenchmarkError(f"{server.name}: GET /metrics answered {status} {document!r}")
    metrics = document["metrics"]
    return dict(metrics["allocations_by_source"]), int(metrics["failed_allocations"])


def measure_service(
    load: Load, server: Server, duration: int, round_: int, master_pid: int | None = None
) -> Sample:
    """A wrk run, and the service's own count that it served every response from the layer
    it is meant to measure (a Redis-mode request served by the fallback would not count)."""
    server.check_alive()
    assert server.proc is not None
    before, failed_before = counters(server)
    cpu = Cpu(server.proc.pid, master_pid)
    run = load.run(server, duration, round_)
    cpu.stop()
    after, failed_after = counters(server)
    served = {s: n - before.get(s, 0) for s, n in after.items() if n != before.get(s, 0)}
    source = SOURCES[server.name]
    if (
        failed_after != failed_before
        or set(served) - {source}
        or served.get(source, 0) < run.requests
    ):
        raise BenchmarkError(
            f"{server.name}: wrk counted {run.requests} responses, but the service served "
            f"{served or 'none'} and failed {failed_after - failed_before}; every one should "
            f"come from {source}{server.log_tail()}"
        )
    checked = f"{served[source]} served from {source}"
    return Sample.of_wrk(run, load.connections, checked, cpu)


# --- redis-benchmark -----------------------------------------------------------------------


def redis_benchmark_path() -> str:
    found = shutil.which("redis-benchmark")
    if not found:
        raise BenchmarkError("redis-benchmark not found: apt-get install -y redis-tools")
    return found


@dataclass
class RedisBenchmark:
    """``redis-benchmark`` calling the allocation function on the master's lease of
    namespace ``bench``; each run is checked against how far it advanced the lease."""

    path: str
    port: int
    pid: int | None  # the master's
    clients: int
    rate: float = 0.0  # calls per second of the last run: sizes the next one

    def argv(self, calls: int) -> list[str]:
        return [
            self.path,
            "-h",
            HOST,
            "-p",
            str(self.port),
            "-c",
            str(self.clients),
            "-n",
            str(calls),
            "--csv",
            "FCALL",
            fn.ALLOCATE,
            "1",
            BENCH_KEY,
            str(SIZE),
        ]

    def calibrate(self, warmup: int) -> None:
        """A short run to learn the rate, then a warm-up of about ``warmup`` seconds."""
        self.run(max(5000, 100 * self.clients), 0)
        self.run(round(self.rate * warmup), 0)

    def measure(self, duration: int, round_: int) -> Sample:
        return self.run(round(self.rate * duration), round_)

    def run(self, calls: int, round_: int) -> Sample:
        calls = max(calls, self.clients)
        argv = self.argv(calls)
        used_before = self.lease_used()
        cpu = Cpu(None, self.pid)
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        timeout = 60 + 4 * calls / max(self.rate, 1000.0)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchmarkError(
                f"redis-benchmark did not finish in {timeout:.0f} s: {shlex.join(argv)}"
            ) from None
        finally:
            _stop_group(proc, grace=2.0)  # a no-op unless interrupted or timed out
        cpu.stop()
        stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
        row = _parse_csv(stdout)
        advanced = self.lease_used() - used_before
        # Errors are only printed; an EMPTY, FENCED or EXHAUSTED reply is not even that. The
        # lease's own count of handed-out IDs says whether every call carved a range.
        if (
            proc.returncode != 0
            or row is None
            or "error" in stderr.lower()
            or advanced != calls * SIZE
        ):
            raise BenchmarkError(
                f"redis-benchmark: {calls} calls advanced the lease by {advanced} IDs, not "
                f"{calls * SIZE} (exit {proc.returncode}): {shlex.join(argv)}\n{stdout}{stderr}"
            )
        self.rate = float(row["rps"])
        latency = {
            "mean": float(row["avg_latency_ms"]),
            "p50": float(row["p50_latency_ms"]),
            "p99": float(row["p99_latency_ms"]),
        }
        return Sample(
            REDIS_BENCHMARK,
            self.clients,
            round_,
            self.rate,
            calls,
            latency,
            f"lease advanced by {calls} x {SIZE}",
            master_busy=cpu.busy(1),
        )

    def lease_used(self) -> int:
        """IDs of the ``bench`` lease handed out so far, read on the master."""
        client = redis.Redis(host=HOST, port=self.port, socket_timeout=5)
        try:
            used = client.hget(BENCH_KEY, LEASE_USED)
        except redis.RedisError as exc:
            raise BenchmarkError(f"reading {BENCH_KEY} on port {self.port}: {exc}") from exc
        finally:
            client.close()
        if used is None:
            raise BenchmarkError(f"no lease at {BENCH_KEY} on the master (port {self.port})")
        return int(used)


def _parse_csv(stdout: str) -> dict[str, str] | None:
    rows = list(csv.DictReader(line for line in stdout.splitlines() if line.startswith('"')))
    return rows[-1] if rows and rows[-1].get("rps") else None


# --- report --------------------------------------------------------------------------------


def _cpu(worker_us: float | None, master_busy: float | None) -> str:
    """The CPU figures of a sample or a median, "-" where they do not apply."""
    worker = f"{worker_us:.0f}" if worker_us else "-"
    master = f"{master_busy:.0%}" if master_busy else "-"
    return f"{worker:>7}{master:>8}"


def print_sample(sample: Sample) -> None:
    lat = sample.latency_ms
    unit = "calls/s" if sample.target == REDIS_BENCHMARK else "req/s"
    cpu = []
    if sample.worker_cpu_us is not None:
        cpu.append(f"worker CPU {sample.worker_cpu_us:.0f} µs/request")
    if sample.master_busy is not None:
        cpu.append(f"master {sample.master_busy:.0%} busy")
    print(
        f"c={sample.clients:<4} round {sample.round}  {sample.target:<16}{sample.rps:>8.0f} "
        f"{unit:<8} avg {lat['mean']:6.2f} ms   p50 {lat['p50']:6.2f} ms   "
        f"p99 {lat['p99']:6.2f} ms   {', '.join(cpu)}   "
        f"({sample.requests} done, 0 errors, {sample.checked})",
        flush=True,
    )


def print_summary(levels: Sequence[Level]) -> None:
    print()
    print(
        f"{'clients':>7}  {'target':<16}{'median rps':>11}{'avg ms':>9}{'p50 ms':>9}"
        f"{'p99 ms':>9}{'cpu µs':>7}{'master':>8}   rps by round"
    )
    for level in levels:
        for t in TARGETS:
            rounds = " ".join(f"{s.rps:.0f}" for s in level.samples[t])
            print(
                f"{level.clients:>7}  {t:<16}{level.rps(t):>11.0f}"
                f"{level.latency(t, 'mean'):>9.2f}{level.latency(t, 'p50'):>9.2f}"
                f"{level.latency(t, 'p99'):>9.2f}"
                f"{_cpu(level.worker_cpu_us(t), level.master_busy(t))}   {rounds}"
            )
    print(
        "(cpu µs: the service worker's CPU time per request; master: the Redis master's "
        "share of one CPU)"
    )
    for level in levels:
        c = level.clients
        by_round = " ".join(f"{r:.2f}" for r in level.ratios_by_round(SERVICE, REDIS_BENCHMARK))
        print(
            f"\nc={c}: service-redis / redis-benchmark (median rps): "
            f"{level.ratio(SERVICE, REDIS_BENCHMARK):.2f}x; by round: {by_round}"
        )
        by_round = " ".join(f"{r:.2f}" for r in level.ratios_by_round(SERVICE, EMBEDDED))
        us = level.overhead_us()
        print(
            f"c={c}: service-redis / embedded (median rps): "
            f"{level.ratio(SERVICE, EMBEDDED):.2f}x; by round: {by_round}"
        )
        print(
            f"c={c}: Redis mode's overhead per request against the embedded default: "
            f"mean latency {us['mean_latency']:+.0f} µs, p50 {us['p50_latency']:+.0f} µs, "
            f"1/throughput {us['per_request']:+.1f} µs, worker CPU "
            f"{us.get('worker_cpu', float('nan')):+.1f} µs",
            flush=True,
        )


# --- main ----------------------------------------------------------------------------------


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    return (done.stdout or done.stderr).strip().splitlines()[0].split(" Copyright")[0]


def tool_versions(wrk: str, redis_benchmark: str) -> dict[str, str]:
    postgres_bin = find_postgres_bin_dir()
    return {
        "wrk": _first_line([wrk, "-v"]),
        "redis-server": _first_line([shutil.which("redis-server") or "redis-server", "-v"]),
        "redis-benchmark": _first_line([redis_benchmark, "--version"]),
        "postgres": _first_line(
            [str(postgres_bin / "postgres") if postgres_bin else "postgres", "--version"]
        ),
    }


def start_cluster(directory: Path) -> LocalCluster:
    cluster = LocalCluster(
        directory, with_postgres=True, progress=lambda line: print(f"  cluster: {line}", flush=True)
    )
    try:
        return cluster.up(timeout=CLUSTER_TIMEOUT)
    except ClusterError as exc:
        raise BenchmarkError(f"the local cluster did not come up: {exc}") from exc


def benchmark(args: argparse.Namespace, env: dict[str, Any]) -> dict[str, Any]:
    wrk, redis_benchmark = ensure_wrk(), redis_benchmark_path()
    env["tools"] = tool_versions(wrk, redis_benchmark)
    print("tools:   " + ", ".join(env["tools"].values()))
    with tempfile.TemporaryDirectory(prefix="keygen-redis-bench-") as tmp:
        # Run as root, PostgreSQL runs as 'postgres', which must get through this 0700 dir.
        Path(tmp).chmod(0o711)
        cluster: LocalCluster | None = None
        servers: list[Server] = []
        try:
            cluster = start_cluster(Path(tmp) / "cluster")
            servers = services(Path(tmp), cluster)
            levels = measure_all(args, cluster, servers, wrk, redis_benchmark, env)
        finally:
            with interrupts_deferred():
                for server in servers:
                    server.stop()
                if cluster is not None:
                    cluster.kill_all()
    print_summary(levels)
    return {
        **env,
        "load": {
            "duration_s": args.duration,
            "rounds": args.rounds,
            "warmup_s": args.warmup,
            "wrk_threads": args.threads,
            "body": REQUEST_BODY.decode(),
            "redis_lease_size": LEASE,
            "redis_benchmark_command": f"FCALL {fn.ALLOCATE} 1 {BENCH_KEY} {SIZE}",
        },
        "samples": [asdict(s) for level in levels for t in TARGETS for s in level.samples[t]],
        "levels": [level.as_dict() for level in levels],
    }


def measure_all(
    args: argparse.Namespace,
    cluster: LocalCluster,
    servers: list[Server],
    wrk: str,
    redis_benchmark: str,
    env: dict[str, Any],
) -> list[Level]:
    redis_mode, embedded = servers
    for server in servers:
        server.start()
        allocate_once(server)
        print(f"server:  {server.name} on port {server.port}: {shlex.join(server.argv)}")
    allocate_once(redis_mode, BENCH_NAMESPACE)  # installs the lease redis-benchmark carves
    master = cluster.master()
    env["redis_master_port"] = master.port
    print(
        f"cluster: master {master.name} on port {master.port}; Sentinels "
        f"{cluster.env()['REDIS_SENTINEL_HOSTS']}; ledger {cluster.env()['KEYGEN_DATABASE_URL']}"
        f"; Redis leases of {LEASE:.0e} IDs"
    )
    print(
        f"redis-benchmark: {redis_benchmark} -h {HOST} -p {master.port} -c N -n "
        f"<calls/s of the last run x {args.duration}> --csv FCALL {fn.ALLOCATE} 1 "
        f"{BENCH_KEY} {SIZE}"
    )
    print(
        f"wrk:     {wrk} -tmin(N,{args.threads}) -cN -d{args.duration}s -s "
        f"{WRK_SCRIPT.relative_to(HERE.parent)}; {args.rounds} rounds of "
        f"{', '.join(TARGETS)} after {args.warmup} s warm-up each",
        flush=True,
    )
    levels = []
    for clients in args.concurrency:
        level = Level(clients)
        load = Load(wrk, clients, min(clients, args.threads))
        bench = RedisBenchmark(redis_benchmark, master.port, master.pid, clients)
        for server in servers:
            load.run(server, args.warmup, 0)
        bench.calibrate(args.warmup)
        for round_ in range(1, args.rounds + 1):
            for sample in (
                measure_service(load, redis_mode, args.duration, round_, master.pid),
                bench.measure(args.duration, round_),
                measure_service(load, embedded, args.duration, round_),
            ):
                level.samples[sample.target].append(sample)
                print_sample(sample)
        levels.append(level)
    if (now := cluster.master()).port != master.port:
        raise BenchmarkError(
            f"the master moved from port {master.port} to {now.port} "
            "during the run: a failover, the figures are not comparable"
        )
    return levels


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--concurrency",
        default="50",
        help="comma-separated connection counts, wrk's and redis-benchmark's (50)",
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per run (10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per concurrency (3)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds per target (2)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads at most (2)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    args = parser.parse_args(argv)
    check_counts(parser, args, "duration", "rounds", "warmup", "threads")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_benchmark(
        lambda env: benchmark(args, env),
        args.json,
        redis=redis.__version__,
        asyncpg=asyncpg.__version__,
    )


if __name__ == "__main__":
    sys.exit(main())
