"""PostgreSQL-direct mode against ``pgbench`` running the grant's ``UPDATE ... RETURNING``.

What it answers: does coalescing make the service faster than one transaction per request?
Both sides run in the same run, on the same private PostgreSQL (``fsync=on``, synchronous
commit), at the same concurrency, in alternating rounds (keygen, pgbench, keygen, ...):

* keygen: ``keygen serve`` with ``KEYGEN_DATABASE_URL`` set (the ``postgresql`` layer,
  direct mode), loaded by ``wrk`` with N connections POSTing ``{"size": 1000}``;
* pgbench: N clients, each transaction the bare counter update of one namespace row,
  ``UPDATE keygen_counters SET last_id = last_id + 1000 WHERE namespace = 'pgbench' AND
  last_id <= 2^63-1 - 1000 RETURNING last_id`` (``-M prepared``, as asyncpg does), without
  the audit row Keygen also writes.

The ratio of the medians (keygen req/s / pgbench tps) is printed per concurrency, with the
grants Keygen made (requests per grant shows the coalescing). With one connection there is
nothing to coalesce and Keygen adds an HTTP hop to the same transaction, so it cannot reach
1.0x there; the target (>= 1.0x) is for concurrent load. A run fails loudly (exit 1) on any
wrk or pgbench error, a non-2xx response, or a response not counted as an allocation.

    .venv/bin/python benchmarks/postgres.py [--concurrency 1,8,32 --duration 8 --rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# allocate.py's server and wrk helpers, imported as benchmarks.allocate from the project root.
sys.path.insert(0, str(HERE.parent))

import asyncpg  # noqa: E402
from benchmarks.allocate import (  # noqa: E402
    HOST,
    KEYGEN,
    REQUEST_BODY,
    WRK_SCRIPT,
    BenchmarkError,
    Load,
    Server,
    _request,
    check_counts,
    ensure_wrk,
    free_port,
    measure,
    run_benchmark,
    server_env,
)
from tests.support.postgres import PostgresServer  # noqa: E402

from keygen.cluster.binaries import find_postgres_bin_dir  # noqa: E402

TARGET_RATIO = 1.0
BENCH_DATABASE = "keygen_bench"
PGBENCH_NAMESPACE = "pgbench"
PGBENCH_SCRIPT = (
    "UPDATE keygen_counters SET last_id = last_id + 1000 "
    f"WHERE namespace = '{PGBENCH_NAMESPACE}' AND last_id <= 9223372036854775807 - 1000 "
    "RETURNING last_id;\n"
)


@dataclass
class Level:
    """The figures at one concurrency."""

    concurrency: int
    keygen_rps: list[float] = field(default_factory=list)
    pgbench_tps: list[float] = field(default_factory=list)
    requests: int = 0
    grants: int = 0

    @property
    def ratio(self) -> float:
        return statistics.median(self.keygen_rps) / statistics.median(self.pgbench_tps)

    def as_dict(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "keygen_rps_by_round": [round(x, 1) for x in self.keygen_rps],
            "pgbench_tps_by_round": [round(x, 1) for x in self.pgbench_tps],
            "keygen_median_rps": round(statistics.median(self.keygen_rps), 1),
            "pgbench_median_tps": round(statistics.median(self.pgbench_tps), 1),
            "ratio": round(self.ratio, 3),
            "requests_per_grant": round(self.requests / self.grants, 2) if self.grants else None,
        }


def keygen_server(workdir: Path, database_url: str, workers: int) -> Server:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "keygen",
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    env = server_env(workdir / "data")
    env.update({"KEYGEN_DATABASE_URL": database_url, "KEYGEN_POSTGRESQL_MODE": "direct"})
    return Server(KEYGEN, argv, env, workdir, port, workdir / "keygen.log")


def preflight(server: Server) -> None:
    status, document = _request(server.port, "POST", "/allocate", REQUEST_BODY)
    if status != 200 or not isinstance(document, dict) or document.get("source") != "postgresql":
        raise BenchmarkError(f"keygen is not serving from PostgreSQL: {status} {document!r}")


def pgbench_path() -> str:
    bin_dir = find_postgres_bin_dir()
    for candidate in [bin_dir / "pgbench"] if bin_dir else []:
        if candidate.exists():
            return str(candidate)
    raise BenchmarkError("pgbench not found: run scripts/install (Debian package postgresql)")


def run_pgbench(pgbench: str, url: str, script: Path, clients: int, duration: int) -> float:
    argv = [
        pgbench,
        "-n",
        "-M",
        "prepared",
        "-c",
        str(clients),
        "-j",
        str(min(clients, 2)),
        "-T",
        str(duration),
        "-f",
        str(script),
        url,
    ]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"pgbench did not finish: {shlex.join(argv)}") from None
    out = done.stdout + done.stderr
    failed = re.search(r"number of failed transactions: (\d+)", out)
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    if done.returncode != 0 or match is None or (failed and int(failed.group(1))):
        raise BenchmarkError(f"pgbench failed ({done.returncode}): {shlex.join(argv)}\n{out}")
    return float(match.group(1))


async def _sql(url: str, query: str) -> Any:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


def sql(url: str, query: str) -> Any:
    return asyncio.run(_sql(url, query))


def grants_so_far(url: str) -> int:
    return int(sql(url, "SELECT count(*) FROM keygen_grants WHERE kind = 'direct'"))


def benchmark(args: argparse.Namespace, env: dict[str, Any]) -> dict[str, Any]:
    wrk = ensure_wrk()
    pgbench = pgbench_path()
    server = (
        PostgresServer.external(args.database_url)
        if args.database_url
        else PostgresServer.private()
    )
    try:
        url = args.database_url or server.create_database(name=BENCH_DATABASE)
        env["postgresql"] = sql(url, "SELECT version()")
        env["synchronous_commit"] = sql(url, "SHOW synchronous_commit")
        env["fsync"] = sql(url, "SHOW fsync")
        print(
            f"postgres: {env['postgresql']}; fsync={env['fsync']}, synchronous_commit="
            f"{env['synchronous_commit']} ({'private' if server.controllable else 'external'})"
        )
        with tempfile.TemporaryDirectory(prefix="keygen-pgbench-") as tmp:
            keygen = keygen_server(Path(tmp), url, args.workers)
            script = Path(tmp) / "grant.sql"
            script.write_text(PGBENCH_SCRIPT)
            keygen.start()
            try:
                preflight(keygen)  # also migrates the ledger: keygen_counters exists now
                sql(
                    url,
                    "INSERT INTO keygen_counters (namespace) VALUES "
                    f"('{PGBENCH_NAMESPACE}') ON CONFLICT DO NOTHING",
                )
                print(f"keygen:  {shlex.join(keygen.argv)} (direct mode)")
                print(
                    f"pgbench: {pgbench} -n -M prepared -c N -j min(N,2) -T {args.duration} "
                    f"-f <<{PGBENCH_SCRIPT.strip()}>>"
                )
                print(
                    f"wrk:     {wrk} -tmin(N,2) -cN -d{args.duration}s -s "
                    f"{WRK_SCRIPT.relative_to(HERE.parent)}; {args.rounds} rounds each, "
                    f"{args.warmup} s warm-up",
                    flush=True,
                )
                levels = [
                    run_level(args, c, keygen, wrk, pgbench, url, script) for c in args.concurrency
                ]
            finally:
                keygen.stop()
    finally:
        server.destroy()
    print_summary(levels)
    concurrent = [level for level in levels if level.concurrency > 1]
    passed = bool(concurrent) and all(level.ratio >= TARGET_RATIO for level in concurrent)
    return {
        **env,
        "load": {
            "duration_s": args.duration,
            "rounds": args.rounds,
            "workers": args.workers,
            "body": REQUEST_BODY.decode(),
            "pgbench_script": PGBENCH_SCRIPT.strip(),
        },
        "levels": [level.as_dict() for level in levels],
        "target_ratio": TARGET_RATIO,
        "verdict": "PASS" if passed else "BELOW TARGET",
    }


def run_level(
    args: argparse.Namespace,
    concurrency: int,
    keygen: Server,
    wrk: str,
    pgbench: str,
    url: str,
    script: Path,
) -> Level:
    level = Level(concurrency)
    load = Load(wrk, concurrency, min(concurrency, 2))
    load.run(keygen, args.warmup, 0)
    run_pgbench(pgbench, url, script, concurrency, args.warmup)
    for round_ in range(1, args.rounds + 1):
        grants_before = grants_so_far(url)
        run = measure(load, keygen, args.duration, round_)
        level.grants += grants_so_far(url) - grants_before
        level.requests += run.keygen_allocations or run.requests
        level.keygen_rps.append(run.rps)
        tps = run_pgbench(pgbench, url, script, concurrency, args.duration)
        level.pgbench_tps.append(tps)
        print(
            f"c={concurrency:<4} round {round_}: keygen {run.rps:8.0f} req/s "
            f"(p50 {run.latency_ms['p50']:.2f} ms, p99 {run.latency_ms['p99']:.2f} ms)   "
            f"pgbench {tps:8.0f} tps   ratio {run.rps / tps:5.2f}",
            flush=True,
        )
    return level


def print_summary(levels: Sequence[Level]) -> None:
    print()
    print(
        f"{'clients':>7}{'keygen req/s':>14}{'pgbench tps':>13}{'ratio':>8}"
        f"{'requests/grant':>16}   verdict"
    )
    for level in levels:
        d = level.as_dict()
        if level.concurrency == 1:
            verdict = "(nothing to coalesce at 1 client)"
        else:
            verdict = "PASS" if level.ratio >= TARGET_RATIO else "BELOW TARGET"
        print(
            f"{level.concurrency:>7}{d['keygen_median_rps']:>14.0f}"
            f"{d['pgbench_median_tps']:>13.0f}{level.ratio:>7.2f}x"
            f"{d['requests_per_grant'] or 0:>16.1f}   {verdict}"
        )
    print(f"target: keygen >= {TARGET_RATIO}x pgbench at the same concurrency", flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--concurrency", default="1,8,32", help="comma-separated client counts (1,8,32)"
    )
    parser.add_argument("--duration", type=int, default=8, help="seconds per run (8)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per concurrency (3)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds per level (2)")
    parser.add_argument("--workers", type=int, default=1, help="keygen serve --workers (1)")
    parser.add_argument(
        "--database-url",
        help="use this existing database instead of a "
        "private server (pgbench writes one row of keygen_counters there)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    args = parser.parse_args(argv)
    check_counts(parser, args, "duration", "rounds", "warmup", "workers")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_benchmark(lambda env: benchmark(args, env), args.json, asyncpg=asyncpg.__version__)


if __name__ == "__main__":
    sys.exit(main())
