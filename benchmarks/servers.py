"""The whole Keygen service under other ASGI servers: uvicorn, as ``keygen serve`` runs it,
against granian, hypercorn and socketify, in speed and in behaviour.

Speed: every server runs the same app (``keygen.api.app:create_app``, the embedded default on
a fresh ``KEYGEN_DATA_DIR``, every other Keygen setting removed from its environment, as
``allocate.py`` does) with ``--workers 1`` and ``--workers 2``, all side by side, under the
same ``wrk`` load (``wrk/post_allocate.lua``) in alternating rounds after a warm-up of each.
The figures are medians over the rounds, each compared with uvicorn at the same worker count
in the same run (the machine is shared: only such ratios mean anything). The CPU time of a
server's processes per request comes from ``/proc``, as in ``auth.py``.

- **uvicorn**: ``keygen serve --workers N`` (uvloop, Keygen's ``KeygenHttpProtocol``);
- **granian**: ``--interface asgi --factory``, uvloop, a single-threaded runtime, HTTP/1 only,
  no websockets (its fastest ASGI settings here: ``asginl`` skips the lifespan Keygen needs,
  and ``--task-impl rust`` made p99 20 to 35 times worse);
- **hypercorn**: ``-k uvloop``, h11;
- **socketify**: ``--interface asgi`` (uWebSockets), through a one-line module in the
  temporary directory, since it takes no factory.

The three others are given their nearest equivalents of Keygen's edge settings (a header
read timeout, a head buffer size, the graceful timeout ``keygen serve`` passes uvicorn),
and a ``KEYGEN_RUN_DIR`` of their own, which ``keygen serve`` makes for uvicorn.

Behaviour (``--behaviour``): each server, with 1 worker and small limits
(``BEHAVIOUR_EDGE``), answers raw-socket probes of what ``docs/security.md`` requires of
the edge: JSON errors for what the parser refuses, the connection limit, the header timeout
and size, pipelining back-pressure, and draining on SIGTERM. What each does is printed: a
finding, not a failure.

Exit status: 0 with the figures (whatever they say), 1 when something broke (a server that
would not start or died, a wrk socket error or non-2xx response), 130 when interrupted.

    .venv/bin/python benchmarks/servers.py [--duration 5 --rounds 3 --workers 1,2]
    .venv/bin/python benchmarks/servers.py --behaviour
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# allocate.py's server and wrk helpers, imported as benchmarks.allocate from the project root.
sys.path.insert(0, str(HERE.parent))

from benchmarks.allocate import (  # noqa: E402
    ALLOCATION_KEYS,
    HOST,
    REQUEST_BODY,
    WRK_SCRIPT,
    WRK_TIMEOUT,
    BenchmarkError,
    Load,
    Server,
    WrkRun,
    _package_version,
    checkout,
    ensure_wrk,
    keygen_server,
    measure,
    preflight,
    run_benchmark,
    running,
    server_env,
)
from benchmarks.auth import group_cpu_seconds  # noqa: E402

from keygen import config  # noqa: E402
from keygen.cluster.processes import free_port  # noqa: E402

UVICORN, GRANIAN, HYPERCORN, SOCKETIFY = "uvicorn", "granian", "hypercorn", "socketify"
SERVERS = (UVICORN, GRANIAN, HYPERCORN, SOCKETIFY)
APP_FACTORY = "keygen.api.app:create_app"
#: What ``keygen serve`` gives uvicorn as its graceful timeout (cli.py), for the others too.
GRACE_SECONDS = int(config.DEFAULT_BODY_TIMEOUT + config.DEFAULT_ALLOCATION_TIMEOUT) + 1


@dataclass(frozen=True)
class Edge:
    """Keygen's edge settings (``KEYGEN_*``); uvicorn's protocol reads them, the others get
    their nearest knobs."""

    max_connections: int = config.DEFAULT_MAX_CONNECTIONS
    header_timeout: float = config.DEFAULT_HEADER_TIMEOUT
    max_header_bytes: int = config.DEFAULT_MAX_HEADER_BYTES
    max_pipeline: int = config.DEFAULT_MAX_PIPELINE
    body_timeout: float = config.DEFAULT_BODY_TIMEOUT

    def env(self) -> dict[str, str]:
        if self == Edge():
            return {}  # the defaults, as the speed runs have them: nothing set
        return {
            "KEYGEN_MAX_CONNECTIONS": str(self.max_connections),
            "KEYGEN_HEADER_TIMEOUT": str(self.header_timeout),
            "KEYGEN_MAX_HEADER_BYTES": str(self.max_header_bytes),
            "KEYGEN_MAX_PIPELINE": str(self.max_pipeline),
            "KEYGEN_BODY_TIMEOUT": str(self.body_timeout),
        }


#: Small enough to reach in a second or two of probing.
BEHAVIOUR_EDGE = Edge(
    max_connections=8, header_timeout=2.0, max_header_bytes=8192, max_pipeline=4, body_timeout=5
)


# --- servers -------------------------------------------------------------------------------


def make_server(
    kind: str, workdir: Path, workers: int, *, src: Path | None = None, edge: Edge = Edge()
) -> Server:
    """Keygen under server ``kind`` with ``workers`` workers, on a free port of 127.0.0.1."""
    name = f"{kind}-{workers}w"
    if kind == UVICORN:
        server = keygen_server(workdir, name=name, src=src)
        server.argv[-1] = str(workers)  # keygen_server's last argument: --workers 1
        server.env.update(edge.env())
        return server
    port = free_port()
    env = {**server_env(workdir / f"{name}-data"), **edge.env()}
    run_dir = workdir / f"{name}-run"  # keygen serve makes one for uvicorn's workers
    run_dir.mkdir()
    env["KEYGEN_RUN_DIR"] = str(run_dir)
    paths = [str(src)] if src is not None else []
    if kind == GRANIAN:
        argv = [
            *(sys.executable, "-m", "granian", "--interface", "asgi", "--factory", APP_FACTORY),
            *("--host", HOST, "--port", str(port), "--workers", str(workers)),
            *("--loop", "uvloop", "--runtime-mode", "st", "--http", "1", "--no-ws"),
            *("--log-level", "warning", "--workers-kill-timeout", str(GRACE_SECONDS)),
            *("--http1-header-read-timeout", str(round(edge.header_timeout * 1000))),
            *("--http1-buffer-size", str(max(8192, edge.max_header_bytes))),
            *("--backpressure", str(edge.max_connections)),
        ]
    elif kind == HYPERCORN:
        toml = workdir / f"{name}.toml"
        toml.write_text(
            f"graceful_timeout = {GRACE_SECONDS}\n"
            f"h11_max_incomplete_size = {edge.max_header_bytes}\n"
        )
        argv = [
            *(sys.executable, "-m", "hypercorn", "-k", "uvloop", "-w", str(workers)),
            *("-b", f"{HOST}:{port}", "-c", str(toml), f"{APP_FACTORY}()"),
        ]
    elif kind == SOCKETIFY:
        shim = workdir / "keygen_socketify_app.py"  # socketify takes an app, not a factory
        shim.write_text(f"from {APP_FACTORY.replace(':', ' import ')}\n\napp = create_app()\n")
        paths.append(str(workdir))
        argv = [
            *(sys.executable, "-m", "socketify", f"{shim.stem}:app", "--interface", "asgi"),
            *("--host", HOST, "--port", str(port), "--workers", str(workers)),
        ]
    else:
        raise BenchmarkError(f"unknown server {kind!r}")
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    return Server(name, argv, env, workdir, port, workdir / f"{name}.log")


def _kind(server: Server) -> str:
    return server.name.rsplit("-", 1)[0]


def _workers(server: Server) -> int:
    return int(server.name.rsplit("-", 1)[1].removesuffix("w"))


# --- speed ---------------------------------------------------------------------------------


@dataclass
class Target:
    server: Server
    runs: list[WrkRun] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return statistics.median(run.rps for run in self.runs)

    def latency(self, key: str) -> float:
        return statistics.median(run.latency_ms[key] for run in self.runs)

    def as_dict(self) -> dict[str, Any]:
        return {
            "argv": self.server.argv,
            "median_rps": round(self.rps, 1),
            "median_latency_ms": {k: self.latency(k) for k in ("mean", "p50", "p99")},
            "median_cpu_us_per_request": round(statistics.median(self.cpu_us), 1),
            "rps_by_round": [round(run.rps, 1) for run in self.runs],
            "cpu_us_by_round": [round(c, 1) for c in self.cpu_us],
        }


def print_table(targets: Sequence[Target]) -> dict[str, Any]:
    """The medians, each ratio to uvicorn at the same worker count, and the ratios by round."""
    base = {_workers(t.server): t for t in targets if _kind(t.server) == UVICORN}
    print(
        f"\n{'server':<11}{'workers':>8}{'median req/s':>14}{'x uvicorn':>11}{'p50 ms':>9}"
        f"{'p99 ms':>9}{'cpu µs/req':>12}   x uvicorn by round"
    )
    ratios: dict[str, Any] = {}
    for t in targets:
        ref = base.get(_workers(t.server))
        by_round = [a.rps / b.rps for a, b in zip(t.runs, ref.runs, strict=True)] if ref else []
        ratio = t.rps / ref.rps if ref else float("nan")
        ratios[t.server.name] = {"ratio": round(ratio, 3), "by_round": by_round}
        print(
            f"{_kind(t.server):<11}{_workers(t.server):>8}{t.rps:>14.0f}{ratio:>10.2f}x"
            f"{t.latency('p50'):>9.2f}{t.latency('p99'):>9.2f}"
            f"{statistics.median(t.cpu_us):>12.1f}   " + " ".join(f"{r:.2f}" for r in by_round)
        )
    print("(cpu µs/req: user + system CPU of all the server's processes per response)")
    return ratios


def benchmark(args: argparse.Namespace, env: dict[str, Any]) -> dict[str, Any]:
    load = Load(ensure_wrk(), args.connections, args.threads)
    print(
        f"wrk:     -t{args.threads} -c{args.connections} -d{args.duration}s "
        f"--timeout={WRK_TIMEOUT} -s {WRK_SCRIPT.relative_to(HERE.parent)}, body "
        f"{REQUEST_BODY.decode()}, {args.rounds} rounds after {args.warmup} s warm-up each",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="keygen-servers-") as tmp:
        workdir = Path(tmp)
        src = checkout(args.rev, workdir) if args.rev else None
        targets = [
            Target(make_server(kind, workdir, workers, src=src))
            for workers in args.workers
            for kind in args.servers
        ]
        with running([t.server for t in targets]):
            for t in targets:
                print(
                    f"server:  {t.server.name} on port {t.server.port}: "
                    f"{shlex.join(t.server.argv)}",
                    flush=True,
                )
                preflight(t.server)
                load.run(t.server, args.warmup, 0)
            for round_ in range(1, args.rounds + 1):
                for t in targets:
                    assert t.server.proc is not None
                    before = group_cpu_seconds(t.server.proc.pid)
                    run = measure(load, t.server, args.duration, round_)
                    cpu = group_cpu_seconds(t.server.proc.pid) - before
                    t.runs.append(run)
                    t.cpu_us.append(cpu / run.requests * 1e6)
                    print(
                        f"round {round_}  {t.server.name:<13} {run.rps:>7.0f} req/s   p50 "
                        f"{run.latency_ms['p50']:6.2f} ms   p99 {run.latency_ms['p99']:7.2f} ms"
                        f"   cpu {t.cpu_us[-1]:6.1f} µs/req   ({run.requests} responses, "
                        f"0 errors, keygen counted {run.keygen_allocations} allocations)",
                        flush=True,
                    )
    ratios = print_table(targets)
    return {
        **env,
        "rev": args.rev,
        "load": {
            "connections": args.connections,
            "threads": args.threads,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "warmup_s": args.warmup,
        },
        "summary": {t.server.name: t.as_dict() for t in targets},
        "ratios_to_uvicorn": ratios,
    }


# --- behaviour -----------------------------------------------------------------------------

JSON_POST = (
    b"POST /allocate HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n" % len(REQUEST_BODY)
)
FULL_POST = JSON_POST + REQUEST_BODY
#: Requests the parser must refuse: what each server answers is recorded.
MALFORMED = {
    "bad request line": b"GARBAGE\r\n\r\n",
    "bad Content-Length": b"POST /allocate HTTP/1.1\r\nHost: b\r\nContent-Type: "
    b"application/json\r\nContent-Length: abc\r\n\r\n" + REQUEST_BODY,
    "two Content-Lengths": b"POST /allocate HTTP/1.1\r\nHost: b\r\nContent-Type: "
    b"application/json\r\nContent-Length: 14\r\nContent-Length: 15\r\n\r\n" + REQUEST_BODY,
    "bad chunk size": b"POST /allocate HTTP/1.1\r\nHost: b\r\nContent-Type: application/json"
    b"\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n" + REQUEST_BODY + b"\r\n0\r\n\r\n",
    "bad HTTP version": b"GET /health/live HTTP/9.9\r\nHost: b\r\n\r\n",
    "unknown method": b"BREW /allocate HTTP/1.1\r\nHost: b\r\n\r\n",
}


def _connect(port: int) -> socket.socket:
    return socket.create_connection((HOST, port), timeout=5)


def _read(sock: socket.socket, wait: float, *, until_close: bool = False) -> tuple[bytes, bool]:
    """What arrives within ``wait`` seconds (up to the first full response, unless
    ``until_close``), and whether the server closed the connection."""
    data, deadline = b"", time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data, False
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
        if not until_close and _complete(data):
            return data, False
    return data, False


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return len(body) >= int(value)
    return True


def describe(data: bytes, closed: bool, waited: float) -> str:
    """One response in a few words: status, type and error code, or what happened instead."""
    if not data:
        return "closed, no answer" if closed else f"no answer in {waited:.0f} s (still open)"
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = " ".join(lines[0].split(" ")[1:2]) or lines[0][:20]
    headers = dict(
        (k.strip().lower(), v.strip()) for k, _, v in (x.partition(":") for x in lines[1:])
    )
    kind = headers.get("content-type", "no type").split(";")[0]
    try:
        document = json.loads(body.split(b"HTTP/1.1 ")[0])
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), dict):
        what = str(document["error"].get("code"))
    elif isinstance(document, dict) and set(document) == ALLOCATION_KEYS:
        what = "allocation"
    elif document is not None:
        what = "JSON body"
    else:
        what = repr(body[:40].decode("latin-1")) if body else "empty body"
    return f"{status} {kind} {what}"


def probe(port: int, request: bytes, wait: float = 3.0) -> str:
    with closing(_connect(port)) as sock:
        sock.sendall(request)
        data, closed = _read(sock, wait)
    return describe(data, closed, wait)


def trickled(port: int, request: bytes, size: int) -> str:
    """``request`` written ``size`` bytes at a time, 10 ms apart, reading any answer."""
    with closing(_connect(port)) as sock:
        for at in range(0, len(request), size):
            try:
                sock.sendall(request[at : at + size])
            except OSError:
                break
            time.sleep(0.01)
        data, closed = _read(sock, 3.0)
    return describe(data, closed, 3.0)


def slow_head(port: int, *, trickle: bool, limit: float) -> str:
    """A head sent a byte every 0.25 s (or nothing at all): what ends it, and when."""
    started = time.monotonic()
    with closing(_connect(port)) as sock:
        if trickle:
            sock.sendall(b"POST /allocate HTTP/1.1\r\nHost: b\r\nX-Slow: ")
        while time.monotonic() - started < limit:
            data, closed = _read(sock, 0.25)
            if data or closed:
                return f"{describe(data, closed, 0)} after {time.monotonic() - started:.1f} s"
            if trickle:
                try:
                    sock.sendall(b"a")
                except OSError:
                    return f"reset after {time.monotonic() - started:.1f} s"
    return f"still open after {limit:.0f} s"


def max_connections(port: int, edge: Edge) -> str:
    """``edge.max_connections`` connections, each with a request whose body is withheld;
    then one more, with a whole request."""
    busy = [_connect(port) for _ in range(edge.max_connections)]
    try:
        for sock in busy:
            sock.sendall(JSON_POST)
        time.sleep(0.3)
        return probe(port, FULL_POST, wait=3.0)
    finally:
        for sock in busy:
            sock.close()


def group_rss_mib(pgid: int) -> float:
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rpartition(")")[2].split()
            if int(stat[2]) != pgid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1024


def pipelined(port: int, count: int = 64) -> str:
    """``count`` requests in one write, none of the answers read for a second."""
    with closing(_connect(port)) as sock:
        sock.sendall(FULL_POST * count)
        time.sleep(1.0)
        data, closed = _read(sock, 2.0, until_close=True)
    answered = data.count(b"HTTP/1.1 200")
    return f"{answered} of {count} answered, " + ("then closed" if closed else "kept open")


def pipeline_flood(port: int, pgid: int, seconds: float = 6.0, cap: int = 64 << 20) -> str:
    """Pipelined requests written for ``seconds`` (at most ``cap`` bytes), never reading an
    answer: whether the server stops reading (back-pressure), closes, or takes it all in."""
    batch = FULL_POST * 256
    rss_before, sent = group_rss_mib(pgid), 0
    outcome = "kept reading"
    with closing(_connect(port)) as sock:
        sock.settimeout(0.5)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and sent < cap:
            try:
                sent += sock.send(batch)
            except TimeoutError:
                outcome = "stopped reading (back-pressure)"
                break
            except OSError:
                outcome = "closed the connection"
                break
        grown = group_rss_mib(pgid) - rss_before
    requests = sent // len(FULL_POST)
    return f"{outcome}: took {sent / 2**20:.1f} MiB ({requests} requests), RSS {grown:+.0f} MiB"


def drain(server: Server) -> dict[str, str]:
    """SIGTERM with a request in flight (its body withheld) and an idle keep-alive connection:
    what happens to each, to a new connection, and to the process."""
    assert server.proc is not None
    port, found = server.port, {}
    inflight, idle = _connect(port), _connect(port)
    try:
        idle.sendall(FULL_POST)
        _read(idle, 3.0)
        inflight.sendall(JSON_POST)
        time.sleep(0.5)
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        # Connect only: waiting for an answer here would delay the body of the request in
        # flight past the server's read timeouts.
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            found["new connection"] = "accepted (the port is still listening)"
        except OSError as exc:
            found["new connection"] = f"refused ({type(exc).__name__})"
        try:
            inflight.sendall(REQUEST_BODY)
            found["request in flight"] = describe(*_read(inflight, 5.0), 5.0)
        except OSError as exc:
            found["request in flight"] = f"failed: {type(exc).__name__}"
        closed = _read(idle, 2.0, until_close=True)[1]
        found["idle keep-alive"] = "closed" if closed else "still open 3 s after SIGTERM"
    finally:
        inflight.close()
        idle.close()
    try:
        code = server.proc.wait(timeout=GRACE_SECONDS + 5)
        found["process"] = f"exited {code} {time.monotonic() - signalled:.1f} s after SIGTERM"
    except subprocess.TimeoutExpired:
        found["process"] = f"still running {GRACE_SECONDS + 5} s after SIGTERM"
    return found


def check_behaviour(server: Server, edge: Edge) -> dict[str, str]:
    assert server.proc is not None
    port = server.port
    found = {name: probe(port, request) for name, request in MALFORMED.items()}
    big = FULL_POST.replace(
        b"Host:", b"X-Big: " + b"a" * (4 * edge.max_header_bytes) + b"\r\nHost:"
    )
    found["head 4x max header bytes, one write"] = probe(port, big)
    found["the same head in 1 KiB writes"] = trickled(port, big, 1024)
    limit = 3 * edge.header_timeout
    found["head sent a byte at a time"] = slow_head(port, trickle=True, limit=limit)
    found["connection that sends nothing"] = slow_head(port, trickle=False, limit=limit)
    found["one connection over max"] = max_connections(port, edge)
    found["64 pipelined, unread"] = pipelined(port)
    found["pipelined flood, unread"] = pipeline_flood(port, server.proc.pid)
    server.check_alive()
    found.update({f"SIGTERM: {k}": v for k, v in drain(server).items()})
    return found


def behaviour(args: argparse.Namespace, env: dict[str, Any]) -> dict[str, Any]:
    edge = BEHAVIOUR_EDGE
    print(f"edge:    {edge} (KEYGEN_* for uvicorn; the nearest knobs for the others)")
    results: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="keygen-servers-") as tmp:
        workdir = Path(tmp)
        src = checkout(args.rev, workdir) if args.rev else None
        for kind in args.servers:
            server = make_server(kind, workdir, 1, src=src, edge=edge)
            with running([server]):
                print(f"server:  {server.name}: {shlex.join(server.argv)}", flush=True)
                preflight(server)
                results[kind] = check_behaviour(server, edge)
            for check, outcome in results[kind].items():
                print(f"  {check:<36} {outcome}", flush=True)
    print_matrix(results)
    return {**env, "rev": args.rev, "edge": edge.__dict__, "behaviour": results}


def print_matrix(results: dict[str, dict[str, str]]) -> None:
    print()
    for check in next(iter(results.values())):
        print(f"{check}:")
        for kind, found in results.items():
            print(f"    {kind:<10} {found[check]}")


# --- main ----------------------------------------------------------------------------------


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if unknown := set(names) - set(SERVERS):
        raise argparse.ArgumentTypeError(f"unknown server(s): {', '.join(sorted(unknown))}")
    return names


def _counts(text: str) -> list[int]:
    try:
        counts = [int(n) for n in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("comma-separated integers") from None
    if min(counts) < 1:
        raise argparse.ArgumentTypeError("every worker count must be at least 1")
    return counts


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--servers", type=_names, help="comma-separated (default: every one installed)"
    )
    parser.add_argument("--workers", type=_counts, default=[1, 2], help="worker counts (1,2)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per round (5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every target (3)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (50)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds per target (2)")
    parser.add_argument("--rev", metavar="REV", help="serve the keygen of commit REV (git)")
    parser.add_argument("--behaviour", action="store_true", help="probe behaviour, not speed")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    args = parser.parse_args(argv)
    if min(args.duration, args.rounds, args.threads, args.warmup) < 1:
        parser.error("--duration, --rounds, --threads and --warmup must be at least 1")
    if args.connections < args.threads:
        parser.error("--connections must be at least --threads")
    if args.servers is None:
        args.servers = [kind for kind in SERVERS if importlib.util.find_spec(kind) is not None]
        if missing := sorted(set(SERVERS) - set(args.servers)):
            print(f"not installed, so not run: {', '.join(missing)}", file=sys.stderr)
    elif missing := [kind for kind in args.servers if importlib.util.find_spec(kind) is None]:
        parser.error(f"not installed: {', '.join(missing)}")
    if UVICORN not in args.servers:
        args.servers.insert(0, UVICORN)  # the reference every ratio is taken to
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    run: Callable[[argparse.Namespace, dict[str, Any]], dict[str, Any]]
    run = behaviour if args.behaviour else benchmark
    versions = {name: _package_version(name) for name in ("granian", "hypercorn", "socketify")}
    return run_benchmark(lambda env: run(args, env), args.json, **versions)


if __name__ == "__main__":
    sys.exit(main())
