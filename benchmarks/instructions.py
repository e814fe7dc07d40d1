"""``POST /allocate`` in instructions, not seconds: Keygen's embedded default against the bare
ASGI app, each server under valgrind's callgrind.

Why: on this shared machine a req/s ratio moves by about 0.1 from one run to the next
(``allocate.py``), so a change of a few per cent on the hot path does not show in it. The
instructions a server executes per request move by about 1 % from run to run, whatever else
the machine is doing, and their ratio follows the req/s ratio (both are CPU-bound on one core):
use this to see what a change costs, ``allocate.py`` for the speed itself. With ``--keys``,
two more servers: one requiring an API key that every request carries, and one whose key
has all three limits and whose namespaces have one (``auth.py``'s, too high to refuse):
what keys and rate limits cost, in instructions.

Each server (the same commands as ``allocate.py``: ``keygen serve --workers 1`` on a fresh
``KEYGEN_DATA_DIR``, the bare app under the same uvicorn options) starts under
``valgrind --tool=callgrind --instr-atstart=no``, so start-up is not counted; it gets
``--warmup`` requests, then the instrumentation is switched on for ``--requests`` requests
(keep-alive, ``--connections`` connections, one request in flight on each, every answer
checked to be a 200 with an allocation's fields), switched off, and the counts dumped. The
figure is the instructions of the whole process (every thread) divided by the requests.
Time-driven work (the probes, the sweepers) runs too, about 50 times slower than at full
speed, so it weighs more here than it does in production: a few hundred to a few thousand
instructions per request, as long as the run takes (what moves the figures between runs).

    .venv/bin/python benchmarks/instructions.py [--requests 2000] [--against REV] [--keys]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# allocate.py's server helpers, imported as benchmarks.allocate from the project root.
sys.path.insert(0, str(HERE.parent))

from benchmarks.allocate import (  # noqa: E402
    ALLOCATION_KEYS,
    BARE,
    HOST,
    KEYGEN,
    REQUEST_BODY,
    BenchmarkError,
    Server,
    bare_server,
    checkout,
    ensure_tool,
    keygen_server,
    run_benchmark,
)
from benchmarks.auth import HIGH_LIMITS, NAMESPACE_LIMITS, make_key  # noqa: E402

#: The embedded hot path's target: at least 0.7x the bare app.
TARGET_RATIO = 0.7
#: Seconds a server under valgrind may take to listen.
START_TIMEOUT = 300.0
KEYED, LIMITED = f"{KEYGEN}+key", f"{KEYGEN}+limits"


def request(token: str | None = None) -> bytes:
    """``POST /allocate`` as every request of a run sends it."""
    key = b"" if token is None else b"Authorization: Bearer %s\r\n" % token.encode()
    return (
        b"POST /allocate HTTP/1.1\r\nHost: 127.0.0.1\r\n%sContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (key, len(REQUEST_BODY), REQUEST_BODY)
    )


def under_callgrind(server: Server, out: Path) -> Server:
    """``server`` run by callgrind, counting nothing until told to."""
    server.argv = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}",
        *server.argv,
    ]
    server.start_timeout = START_TIMEOUT
    return server


def send_requests(port: int, requests: int, connections: int, data: bytes) -> None:
    """``requests`` times ``data`` (a POST /allocate) over ``connections`` keep-alive
    connections, each answer checked."""
    socks = [socket.create_connection((HOST, port), timeout=120) for _ in range(connections)]
    try:
        for _ in range(requests // connections):
            for sock in socks:
                sock.sendall(data)
            for sock in socks:
                _check(_read_response(sock))
    finally:
        for sock in socks:
            sock.close()


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += _recv(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += _recv(sock)
    return head + b"\r\n\r\n" + body


def _recv(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise BenchmarkError("the server closed a connection in the middle of the run")
    return chunk


def _check(response: bytes) -> None:
    head, _, body = response.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200 "):
        raise BenchmarkError(f"not a 200: {response[:300]!r}")
    if not ALLOCATION_KEYS <= set(json.loads(body)):
        raise BenchmarkError(f"not an allocation: {body[:300]!r}")


def callgrind_control(pid: int, *options: str) -> None:
    try:
        subprocess.run(
            ["callgrind_control", *options, str(pid)],
            check=True,
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise BenchmarkError(f"callgrind_control {' '.join(options)} {pid} failed: {exc}") from exc


def instructions_per_request(
    server: Server, out: Path, args: argparse.Namespace, data: bytes
) -> float:
    assert server.proc is not None
    pid = server.proc.pid  # valgrind runs the program in its own process
    send_requests(server.port, args.warmup, args.connections, data)
    callgrind_control(pid, "--instr=on")
    send_requests(server.port, args.requests, args.connections, data)
    callgrind_control(pid, "--instr=off")
    callgrind_control(pid, "--dump")
    server.check_alive()
    totals = [
        int(line.split()[1])
        for dump in out.parent.glob(f"{out.name}*")
        for line in dump.read_text(errors="replace").splitlines()
        if line.startswith("totals:")
    ]
    if not totals or max(totals) == 0:
        raise BenchmarkError(f"callgrind dumped no counts for {server.name} into {out.parent}")
    return max(totals) / args.requests


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=2000, help="requests counted (2000)")
    parser.add_argument("--warmup", type=int, default=400, help="requests before (400)")
    parser.add_argument("--connections", type=int, default=4, help="connections (4)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    parser.add_argument(
        "--against", metavar="REV", help="also count the keygen of commit REV (git)"
    )
    parser.add_argument(
        "--keys", action="store_true", help="also count keygen with a key, and with limits"
    )
    args = parser.parse_args(argv)
    if args.connections < 1 or args.requests < args.connections or args.warmup < 0:
        parser.error("--requests must be at least --connections, which must be at least 1")
    return args


def benchmark(args: argparse.Namespace, env: dict[str, Any]) -> dict[str, Any]:
    ensure_tool("valgrind", "valgrind")
    ensure_tool("callgrind_control", "valgrind")
    with tempfile.TemporaryDirectory(prefix="keygen-instructions-") as tmp:
        return _count(args, env, Path(tmp))


def _count(args: argparse.Namespace, env: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Every server of the run, one after the other, in ``workdir``."""
    servers = [keygen_server(workdir), bare_server(workdir)]
    tokens: dict[str, str] = {}
    if args.keys:
        keyed = keygen_server(workdir, name=KEYED)
        keyed.env["KEYGEN_AUTH"] = "required"
        tokens[KEYED] = make_key(keyed)
        limited = keygen_server(workdir, name=LIMITED)
        limited.env["KEYGEN_AUTH"] = "required"
        limited.env["KEYGEN_NAMESPACE_LIMITS"] = NAMESPACE_LIMITS
        tokens[LIMITED] = make_key(limited, *HIGH_LIMITS)
        servers[1:1] = [keyed, limited]
    if args.against:
        against = f"{KEYGEN}@{args.against}"
        (workdir / "against").mkdir()
        src = checkout(args.against, workdir / "against")
        servers.insert(1, keygen_server(workdir, name=against, src=src))
    print(
        f"requests: {args.requests} counted after {args.warmup}, over {args.connections} "
        "keep-alive connections, each server under valgrind --tool=callgrind",
        flush=True,
    )
    figures: dict[str, float] = {}
    for server in servers:
        out = workdir / f"{server.name.replace('@', '-').replace('+', '-')}.callgrind"
        with ExitStack() as stack:
            stack.callback(server.stop)
            under_callgrind(server, out).start()
            figures[server.name] = instructions_per_request(
                server, out, args, request(tokens.get(server.name))
            )
        print(f"{server.name:20} {figures[server.name]:>10,.0f} instructions a request", flush=True)
    ratio = figures[BARE] / figures[KEYGEN]
    verdict = "PASS" if ratio >= TARGET_RATIO else "BELOW TARGET"
    print(
        f"\nratio bare/keygen (instructions): {ratio:.3f}x  {verdict} (target >= {TARGET_RATIO}x)"
    )
    results: dict[str, Any] = {
        "env": env,
        "instructions_per_request": {name: round(n) for name, n in figures.items()},
        "ratio": round(ratio, 3),
    }
    for name in tokens:
        extra = figures[name] - figures[KEYGEN]
        print(f"{name}: {extra:+,.0f} instructions a request ({extra / figures[KEYGEN]:+.1%})")
        results[f"{name}_extra"] = round(extra)
    if args.against:
        change = figures[KEYGEN] / figures[against] - 1
        print(f"keygen against keygen@{args.against}: {change:+.1%} instructions a request")
        results["change_against"] = round(change, 4)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_benchmark(lambda env: benchmark(args, env), args.json)


if __name__ == "__main__":
    sys.exit(main())
