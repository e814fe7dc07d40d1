"""What API keys cost on the hot path: the server's CPU per ``POST /allocate`` with and
without a key, in the same run.

Two ``keygen serve --workers 1`` run side by side on fresh data dirs (the embedded default):

- **open**: ``KEYGEN_AUTH=off``, requests without an ``Authorization`` header (Keygen as it
  was before keys);
- **keyed**: ``KEYGEN_AUTH=required``, one key (``allocate:*``, made with ``keygen keys
  create`` before start-up), every request carrying ``Authorization: Bearer <token>``: the
  header parsed, the HMAC computed, the dict looked up and the scope matched.

The same ``wrk`` load drives both in alternating rounds (open, keyed, open, ...). The figure
is CPU time (user + system, from ``/proc/<pid>/stat``, every process of the server's group)
divided by the requests wrk counted, per round; the verdict compares the medians'
difference with the issue's budget of 10 µs. A second figure times the check alone, in
process (``bearer_token`` + ``KeyStore.authenticate`` + ``Grants.may_allocate``).

    .venv/bin/python benchmarks/auth.py [--duration 5 --rounds 5 --connections 50]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import timeit
from collections.abc import Sequence
from pathlib import Path

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

from keygen.auth import KeyStore, bearer_token, new_key  # noqa: E402
from keygen.ledgers.base import ApiKeyRecord  # noqa: E402

BUDGET_US = 10.0
OPEN, KEYED = "open", "keyed"
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


def make_key(server: Server) -> str:
    """A key (allocate:*) in the server's ledger, made before it starts; its token."""
    done = subprocess.run(
        [*KEYS_CREATE, "--name", "bench", "--scope", "allocate:*", "--json"],
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
        grants = store.authenticate(bearer_token(headers))
        if not grants.may_allocate("orders"):
            raise AssertionError("refused")

    seconds = min(timeit.repeat(check, number=iterations, repeat=5))
    return seconds / iterations * 1e6


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
    print(f"the check alone, in process: {alone:.2f} µs per request")
    cpu: dict[str, list[float]] = {OPEN: [], KEYED: []}
    rps: dict[str, list[float]] = {OPEN: [], KEYED: []}
    with tempfile.TemporaryDirectory(prefix="keygen-bench-auth-") as tmp:
        open_server = keygen_server(Path(tmp), name=OPEN)
        open_server.env["KEYGEN_AUTH"] = "off"
        keyed_server = keygen_server(Path(tmp), name=KEYED)
        keyed_server.env["KEYGEN_AUTH"] = "required"
        token = make_key(keyed_server)
        headers = {OPEN: [], KEYED: [f"Authorization: Bearer {token}"]}
        servers = [open_server, keyed_server]
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
                        f"round {round_} {server.name:5}: {run.rps:9.0f} req/s, "
                        f"{per_request:6.2f} µs CPU per request"
                    )
    medians = {name: statistics.median(values) for name, values in cpu.items()}
    cost = medians[KEYED] - medians[OPEN]
    for name in (OPEN, KEYED):
        print(
            f"{name:5}: median {medians[name]:.2f} µs CPU per request, "
            f"{statistics.median(rps[name]):.0f} req/s"
        )
    verdict = "PASS" if cost <= BUDGET_US else "OVER BUDGET"
    print(f"auth costs {cost:+.2f} µs CPU per request (budget {BUDGET_US:g} µs): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
