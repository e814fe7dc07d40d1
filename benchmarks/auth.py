"""What API keys and rate limits cost on the hot path: the server's CPU per ``POST
/allocate`` without a key, with one, and with one that has limits, in the same run.

Three ``keygen serve --workers 1`` run side by side on fresh data dirs (the embedded default):

- **open**: ``KEYGEN_AUTH=off``, requests without an ``Authorization`` header (Keygen as it
  was before keys);
- **keyed**: ``KEYGEN_AUTH=required``, one key (``allocate:*``, made with ``keygen keys
  create`` before start-up), every request carrying ``Authorization: Bearer <token>``: the
  header parsed, the HMAC computed, the dict looked up and the scope matched;
- **limited**: as keyed, the key with all three limits (requests and IDs a second, IDs a
  day) and ``KEYGEN_NAMESPACE_LIMITS`` giving every namespace one, all too high to refuse:
  four counters checked and counted per request (``keygen/quotas.py``).

The same ``wrk`` load drives them in alternating rounds (open, keyed, limited, open, ...).
The figure is CPU time (user + system, from ``/proc/<pid>/stat``, every process of the
server's group) divided by the requests wrk counted, per round; the verdict compares the
medians' difference (limited against open) with the budget of 10 µs for keys and limits
together. In process, it also times the key check alone (``bearer_token`` +
``KeyStore.authenticate`` + ``Grants.may_allocate``), Keygen's four counters, and the same
four limits with the ``limits`` library (in memory and, when ``redis-server`` is installed,
with its Redis storage on a local server): why the counters are Keygen's own.

    .venv/bin/python benchmarks/auth.py [--duration 5 --rounds 5 --connections 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# allocate.py's server and wrk helpers, imported as benchmarks.allocate from the project root.
sys.path.insert(0, str(HERE.parent))

from benchmarks.allocate import (  # noqa: E402
    HOST,
    WRK_SCRIPT,
    WRK_TIMEOUT,
    BenchmarkError,
    Server,
    WrkRun,
    _parse_wrk,
    _stop_group,
    ensure_wrk,
    keygen_server,
    running,
)

from keygen.auth import KeyStore  # noqa: E402
from keygen.auth_tokens import bearer_token, new_key  # noqa: E402
from keygen.cluster.processes import free_port  # noqa: E402
from keygen.ledgers.base import ApiKeyRecord  # noqa: E402
from keygen.quotas import Quotas  # noqa: E402
from keygen.rates import Rates, parse_namespace_limits  # noqa: E402

BUDGET_US = 10.0
OPEN, KEYED, LIMITED = "open", "keyed", "limited"
#: Limits too high to refuse anything in a benchmark, but checked and counted all the same.
HIGH_LIMITS = ["--requests-per-second", "1000000000", "--ids-per-second", "10000000000000"]
HIGH_LIMITS += ["--ids-per-day", "100000000000000000"]
NAMESPACE_LIMITS = "*:requests_per_second=1000000000"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
KEYS_CREATE = [sys.executable, "-m", "keygen", "keys", "create"]


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU of every process in group ``pgid`` (the server and any worker)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        # After the command: state ppid pgrp ... utime(12) stime(13), 0-based from state.
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def wrk(
    binary: str, args: argparse.Namespace, server: Server, seconds: int, headers: Sequence[str]
) -> WrkRun:
    argv = [
        binary,
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{seconds}s",
        f"--timeout={WRK_TIMEOUT}",
        *(a for header in headers for a in ("-H", header)),
        "-s",
        str(WRK_SCRIPT),
        f"http://{HOST}:{server.port}/allocate",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=seconds + 30)
    finally:
        _stop_group(proc, grace=2.0)
    if proc.returncode != 0:
        raise BenchmarkError(f"wrk exited with {proc.returncode}: {err.decode()}")
    run = _parse_wrk(out.decode(errors="replace"), server.name, 0)
    if any(run.errors.values()):
        raise BenchmarkError(f"{server.name}: wrk saw errors {run.errors} (a 401 or 403?)")
    return run


def make_key(server: Server, *options: str) -> str:
    """A key (allocate:*, with ``options``) in the server's ledger, made before it starts;
    its token."""
    done = subprocess.run(
        [*KEYS_CREATE, "--name", "bench", "--scope", "allocate:*", *options, "--json"],
        env=server.env,
        cwd=server.cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    token: str = json.loads(done.stdout)["token"]
    return token


def check_alone(iterations: int = 200_000) -> float:
    """µs per request of the check itself, in process, with a table of 100 keys."""
    secret = b"b" * 32
    store = KeyStore(None, secret, "required")
    records: list[ApiKeyRecord] = []
    token = ""
    for i in range(100):
        token, record = new_key(f"k{i}", ["allocate:shop-*", "allocate:orders"], secret, 0.0)
        records.append(record)
    store.load(records)
    headers = [
        (b"host", b"127.0.0.1:8010"),
        (b"content-type", b"application/json"),
        (b"content-length", b"14"),
        (b"authorization", f"Bearer {token}".encode()),
    ]

    def check() -> None:
        grants = store.authenticate(bearer_token(dict(headers).get(b"authorization")))
        if not grants.may_allocate("orders"):
            raise AssertionError("refused")

    seconds = min(timeit.repeat(check, number=iterations, repeat=5))
    return seconds / iterations * 1e6


def counters_alone(iterations: int = 200_000) -> float:
    """µs per request of Keygen's rate limits, in process: a key's three and a namespace's."""
    quotas = Quotas(parse_namespace_limits(NAMESPACE_LIMITS))
    rates = Rates(10**9, 10**13, 10**17)
    seconds = min(
        timeit.repeat(lambda: quotas.admit("k", rates, "orders", 1000), number=iterations, repeat=5)
    )
    return seconds / iterations * 1e6


def library_alone(iterations: int = 50_000) -> dict[str, float]:
    """µs per request of the same four limits with the ``limits`` library: its sliding-window
    counter in memory, and with its Redis storage when ``redis-server`` is installed (the
    client's CPU and the wall time, a round trip per limit and request)."""
    try:
        from limits import parse
        from limits.aio.storage import MemoryStorage, RedisStorage
        from limits.aio.strategies import SlidingWindowCounterRateLimiter
    except ImportError:
        return {}
    items = [parse(text) for text in ("1000000000/second", "10000000000000/second")]
    items += [parse("100000000000000000/day"), parse("1000000000/second")]

    async def per_request(storage: Any, count: int) -> tuple[float, float]:
        limiter = SlidingWindowCounterRateLimiter(storage)
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(count):
            for item, cost in zip(items, (1, 1000, 1000, 1), strict=True):
                await limiter.hit(item, "k", cost=cost)
        return (
            (time.process_time() - cpu) / count * 1e6,
            (time.perf_counter() - wall) / count * 1e6,
        )

    figures = {"memory": asyncio.run(per_request(MemoryStorage(), iterations))[0]}
    server = shutil.which("redis-server")
    if server is None:
        return figures
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((HOST, port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchmarkError("redis-server did not start") from None
                time.sleep(0.05)
        storage = RedisStorage(f"async+redis://{HOST}:{port}", implementation="redispy")
        figures["redis cpu"], figures["redis wall"] = asyncio.run(per_request(storage, 2_000))
    finally:
        proc.terminate()
        proc.wait(10)
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per round (5)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per target (5)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds (2)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (50)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    args = parser.parse_args(argv)
    binary = ensure_wrk()
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    alone = check_alone()
    print(f"the key check alone, in process: {alone:.2f} µs per request")
    print(f"Keygen's four rate-limit counters, in process: {counters_alone():.2f} µs per request")
    for what, figure in library_alone().items():
        print(f"the same four limits with the limits library, {what}: {figure:.2f} µs per request")
    cpu: dict[str, list[float]] = {OPEN: [], KEYED: [], LIMITED: []}
    rps: dict[str, list[float]] = {OPEN: [], KEYED: [], LIMITED: []}
    with tempfile.TemporaryDirectory(prefix="keygen-bench-auth-") as tmp:
        open_server = keygen_server(Path(tmp), name=OPEN)
        open_server.env["KEYGEN_AUTH"] = "off"
        keyed_server = keygen_server(Path(tmp), name=KEYED)
        keyed_server.env["KEYGEN_AUTH"] = "required"
        token = make_key(keyed_server)
        limited_server = keygen_server(Path(tmp), name=LIMITED)
        limited_server.env["KEYGEN_AUTH"] = "required"
        limited_server.env["KEYGEN_NAMESPACE_LIMITS"] = NAMESPACE_LIMITS
        limited_token = make_key(limited_server, *HIGH_LIMITS)
        headers = {
            OPEN: [],
            KEYED: [f"Authorization: Bearer {token}"],
            LIMITED: [f"Authorization: Bearer {limited_token}"],
        }
        servers = [open_server, keyed_server, limited_server]
        with running(servers):
            for server in servers:
                wrk(binary, args, server, args.warmup, headers[server.name])
            for round_ in range(1, args.rounds + 1):
                for server in servers:
                    assert server.proc is not None
                    before = group_cpu_seconds(server.proc.pid)
                    run = wrk(binary, args, server, args.duration, headers[server.name])
                    used = group_cpu_seconds(server.proc.pid) - before
                    per_request = used / run.requests * 1e6
                    cpu[server.name].append(per_request)
                    rps[server.name].append(run.rps)
                    print(
                        f"round {round_} {server.name:7}: {run.rps:9.0f} req/s, "
                        f"{per_request:6.2f} µs CPU per request"
                    )
    medians = {name: statistics.median(values) for name, values in cpu.items()}
    for name in (OPEN, KEYED, LIMITED):
        print(
            f"{name:7}: median {medians[name]:.2f} µs CPU per request, "
            f"{statistics.median(rps[name]):.0f} req/s"
        )
    print(f"a key costs {medians[KEYED] - medians[OPEN]:+.2f} µs CPU per request")
    cost = medians[LIMITED] - medians[OPEN]
    verdict = "PASS" if cost <= BUDGET_US else "OVER BUDGET"
    print(
        f"a key and its limits cost {cost:+.2f} µs CPU per request (budget {BUDGET_US:g} µs): "
        f"{verdict}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
