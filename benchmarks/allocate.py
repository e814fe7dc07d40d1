"""``POST /allocate`` throughput and latency: Keygen's embedded default against a bare ASGI app.

Why a ratio: the machines this runs on are shared and noisy, so an absolute req/s figure
mostly measures the neighbours. Both servers run side by side in one run, under the same
uvicorn options (1 worker, uvloop, httptools, no access log) and the same ``wrk`` load, in
alternating rounds (keygen, bare, keygen, bare, ...), and the ratio of their medians is what
is reported against the target (keygen >= 0.7x bare). The bare app (``bare_app.py``)
only reads and parses the body and answers a constant of the same shape.

Keygen runs as ``keygen serve --workers 1`` on a fresh ``KEYGEN_DATA_DIR`` (the SQLite ledger),
with every other Keygen setting removed from its environment and a working directory without
a ``.env``. A run fails loudly (exit 1) if wrk reports any socket error or non-2xx response,
or if Keygen's own counters do not show every counted response as a successful allocation.
Below target is a finding, not a failure: the exit status stays 0.

    .venv/bin/python benchmarks/allocate.py [--duration 10 --rounds 3 --connections 50]
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import FrameType
from typing import Any

from keygen.cluster.processes import free_port

HERE = Path(__file__).resolve().parent
WRK_SCRIPT = HERE / "wrk" / "post_allocate.lua"
REQUEST_BODY = b'{"size": 1000}'
ALLOCATION_KEYS = {"start", "end", "size", "namespace", "source", "timestamp"}
TARGET_RATIO = 0.7
KEYGEN, BARE = "keygen", "bare"
HOST = "127.0.0.1"
WRK_TIMEOUT = "5s"  # a request slower than this counts as a socket error, and fails the run
START_TIMEOUT = 30.0
# Settings Keygen reads without its KEYGEN_ prefix (the original product's names).
UNPREFIXED_SETTINGS = (
    "ID_BLOCK_SIZE",
    "ALLOCATION_TIMEOUT",
    "LOCK_TIMEOUT",
    "REDIS_SENTINEL_HOSTS",
    "REDIS_SENTINEL_MASTER_NAME",
    "REDIS_SENTINEL_QUORUM",
)


class BenchmarkError(Exception):
    """Something broke: the figures of this run cannot be trusted."""


# --- servers -------------------------------------------------------------------------------


@dataclass
class Server:
    """A server process in its own session, so that it and its children are killed together."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    #: Seconds it may take to listen (longer under valgrind).
    start_timeout: float = START_TIMEOUT

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise BenchmarkError(
            f"{self.name} did not listen within {self.start_timeout:.0f} s{self.log_tail()}"
        )

    def check_alive(self) -> None:
        if self.proc is None:
            raise BenchmarkError(f"{self.name} server was not started")
        if (code := self.proc.poll()) is not None:
            raise BenchmarkError(f"{self.name} server exited ({code}){self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        _stop_group(self.proc, grace=10.0)
        self.proc = None

    def log_tail(self) -> str:
        try:
            text = self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""
        return f"\n--- last lines of the {self.name} server's log ---\n{text}"


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP wait until the block is done, then are delivered: a second
    Ctrl-C must not cut a cleanup short."""
    previous = signal.pthread_sigmask(
        signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    )
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # nested blocks keep theirs


def _stop_group(proc: subprocess.Popen[bytes], *, grace: float) -> None:
    """SIGTERM the process group, SIGKILL it if it is still there after ``grace`` seconds."""
    with interrupts_deferred():
        _kill_group(proc, grace)


def _kill_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def server_env(data_dir: Path) -> dict[str, str]:
    """This environment without Keygen's settings, plus a fresh data directory."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.upper().startswith("KEYGEN_") and name.upper() not in UNPREFIXED_SETTINGS
    }
    env["KEYGEN_DATA_DIR"] = str(data_dir)
    return env


def keygen_server(workdir: Path, *, name: str = KEYGEN, src: Path | None = None) -> Server:
    """``keygen serve``; with ``src``, the package found there instead of the installed one
    (another commit's code, compared in the same run)."""
    port = free_port()
    env = server_env(workdir / f"{name}-data")
    if src is not None:
        env["PYTHONPATH"] = str(src)
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
        "1",
    ]
    return Server(name, argv, env, workdir, port, workdir / f"{name}.log")


def checkout(rev: str, into: Path) -> Path:
    """The ``src`` folder of commit ``rev`` of this repository, exported into ``into``."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(HERE.parent), "archive", rev, "src"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BenchmarkError(f"cannot export commit {rev!r}: {exc}") from exc
    return into / "src"


def bare_server(workdir: Path) -> Server:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "bare_app:app",
        "--app-dir",
        str(HERE),
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
    ]
    return Server(BARE, argv, server_env(workdir / "data"), workdir, port, workdir / "bare.log")


# --- HTTP checks ---------------------------------------------------------------------------


def _request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    # http.client, not httpx or urllib: no proxy from the environment can get in the way.
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        status, raw = response.status, response.read()
    except OSError as exc:
        raise BenchmarkError(f"{method} {path} on port {port} failed: {exc}") from exc
    finally:
        conn.close()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def preflight(server: Server) -> None:
    """One ``POST /allocate`` by hand: a 200 with an allocation's shape, before any load."""
    status, document = _request(server.port, "POST", "/allocate", REQUEST_BODY)
    if status != 200 or not isinstance(document, dict) or set(document) != ALLOCATION_KEYS:
        raise BenchmarkError(f"{server.name}: POST /allocate answered {status} {document!r}")
    if server.name != BARE and (document["source"] != "sqlite" or document["size"] != 1000):
        raise BenchmarkError(f"keygen is not on its embedded default: {document!r}")


def keygen_counters(port: int) -> tuple[int, int]:
    """Keygen's (successful, failed) allocations so far, from ``GET /metrics``."""
    status, document = _request(port, "GET", "/metrics")
    if status != 200 or not isinstance(document, dict):
        raise BenchmarkError(f"keygen: GET /metrics answered {status} {document!r}")
    metrics = document["metrics"]
    return int(metrics["total_allocations"]), int(metrics["failed_allocations"])


# --- wrk -----------------------------------------------------------------------------------


def ensure_wrk() -> str:
    """Path of ``wrk``, installed from the Debian package when it is missing."""
    return ensure_tool("wrk", "wrk")


def ensure_tool(command: str, package: str) -> str:
    """Path of ``command``, installed from the Debian package ``package`` when it is missing."""
    found = shutil.which(command)
    if found:
        return found
    print(
        f"{command} is not installed: installing the Debian package {package!r} "
        f"(apt-get update && apt-get install -y {package})",
        file=sys.stderr,
        flush=True,
    )
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if sudo and not shutil.which("sudo"):
        raise BenchmarkError(
            f"{command} is missing and installing it needs root or sudo; run: "
            f"apt-get install -y {package}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in (["apt-get", "update"], ["apt-get", "install", "-y", package]):
        try:
            subprocess.run([*sudo, *step], env=env, check=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as exc:
            raise BenchmarkError(
                f"could not install {package} ({shlex.join(step)}: {exc}); "
                f"install it by hand: apt-get install -y {package}"
            ) from exc
    found = shutil.which(command)
    if not found:
        raise BenchmarkError(f"apt-get installed {package!r} but {command} is not on PATH")
    return found


@dataclass(frozen=True)
class WrkRun:
    """One wrk run against one target; latencies in milliseconds."""

    target: str
    round: int
    requests: int
    seconds: float
    errors: dict[str, int]
    latency_ms: dict[str, float]
    keygen_allocations: int | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rps": round(self.rps, 1)}


@dataclass(frozen=True)
class Load:
    wrk: str
    connections: int
    threads: int

    def run(self, server: Server, duration: int, round_: int) -> WrkRun:
        argv = [
            self.wrk,
            f"-t{self.threads}",
            f"-c{self.connections}",
            f"-d{duration}s",
            f"--timeout={WRK_TIMEOUT}",
            "-s",
            str(WRK_SCRIPT),
            f"http://{HOST}:{server.port}/allocate",
        ]
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=duration + 30)
        except subprocess.TimeoutExpired:
            raise BenchmarkError(f"wrk did not finish: {shlex.join(argv)}") from None
        finally:
            _stop_group(proc, grace=2.0)  # a no-op unless interrupted or timed out
        stdout = out.decode(errors="replace")
        try:
            if proc.returncode != 0:
                raise BenchmarkError(
                    f"wrk exited with {proc.returncode}: {shlex.join(argv)}\n"
                    f"{stdout}{err.decode(errors='replace')}"
                )
            return _parse_wrk(stdout, server.name, round_)
        except BenchmarkError:
            server.check_alive()  # a dead server explains the errors better, with its log
            raise


def _parse_wrk(stdout: str, target: str, round_: int) -> WrkRun:
    lines = [line for line in stdout.splitlines() if line.startswith("WRK_JSON ")]
    if not lines:
        raise BenchmarkError(f"wrk printed no WRK_JSON line:\n{stdout}")
    data = json.loads(lines[-1].removeprefix("WRK_JSON "))
    run = WrkRun(
        target=target,
        round=round_,
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        errors=data["errors"],
        latency_ms={k: round(v / 1000, 3) for k, v in data["latency_us"].items()},
    )
    if run.requests == 0 or any(run.errors.values()):
        raise BenchmarkError(
            f"{target}: {run.requests} responses, errors {run.errors} "
            f"(status = responses >= 400)\n{stdout}"
        )
    return run


def measure(load: Load, server: Server, duration: int, round_: int) -> WrkRun:
    """A wrk run; on Keygen, also checks that every counted response was an allocation."""
    server.check_alive()
    if server.name == BARE:
        run = load.run(server, duration, round_)
        server.check_alive()
        return run
    ok_before, failed_before = keygen_counters(server.port)
    run = load.run(server, duration, round_)
    ok_after, failed_after = keygen_counters(server.port)
    allocations = ok_after - ok_before
    # >=, not ==: wrk stops counting with requests still in flight that Keygen served.
    if failed_after != failed_before or allocations < run.requests:
        raise BenchmarkError(
            f"keygen: wrk counted {run.requests} responses, but keygen made {allocations} "
            f"allocations and {failed_after - failed_before} failed ones"
        )
    return replace(run, keygen_allocations=allocations)


# --- report --------------------------------------------------------------------------------


@dataclass
class Summary:
    target: str
    runs: list[WrkRun] = field(default_factory=list)

    def median(self, key: str) -> float:
        return statistics.median(run.latency_ms[key] for run in self.runs)

    @property
    def rps(self) -> float:
        return statistics.median(run.rps for run in self.runs)

    def as_dict(self) -> dict[str, Any]:
        return {
            "median_rps": round(self.rps, 1),
            "median_latency_ms": {k: self.median(k) for k in ("mean", "p50", "p99")},
            "rps_by_round": [round(run.rps, 1) for run in self.runs],
        }


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, Any]:
    return {
        "command": shlex.join(sys.orig_argv),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "loadavg": os.getloadavg(),
        "python": f"{platform.python_version()} ({sys.executable})",
        "versions": {
            name: _package_version(name)
            for name in ("keygen", "uvicorn", "uvloop", "httptools", "msgspec")
        },
    }


def print_header(env: dict[str, Any]) -> None:
    print(f"command: {env['command']}")
    print(f"date:    {env['date']}")
    print(
        f"nproc:   {env['nproc']}   load average: " + " ".join(f"{x:.2f}" for x in env["loadavg"])
    )
    print(f"python:  {env['python']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()), flush=True)


def print_run(run: WrkRun) -> None:
    lat = run.latency_ms
    checked = (
        f", keygen counted {run.keygen_allocations} allocations"
        if run.keygen_allocations is not None
        else ""
    )
    print(
        f"round {run.round}  {run.target:<6} {run.rps:>9.0f} req/s   avg {lat['mean']:6.2f} ms"
        f"   p50 {lat['p50']:6.2f} ms   p99 {lat['p99']:6.2f} ms   "
        f"({run.requests} responses, 0 errors{checked})",
        flush=True,
    )


def round_ratios(summaries: dict[str, Summary], of: str = KEYGEN, to: str = BARE) -> list[float]:
    """of/to of each round: how far the noise moves the ratio."""
    pairs = zip(summaries[of].runs, summaries[to].runs, strict=True)
    return [round(a.rps / b.rps, 3) for a, b in pairs]


def print_summary(summaries: dict[str, Summary], ratio: float) -> None:
    print()
    print(
        f"{'target':<8}{'median req/s':>14}{'avg ms':>9}{'p50 ms':>9}{'p99 ms':>9}   req/s by round"
    )
    for name, s in summaries.items():
        rounds = " ".join(f"{run.rps:.0f}" for run in s.runs)
        print(
            f"{name:<8}{s.rps:>14.0f}{s.median('mean'):>9.2f}{s.median('p50'):>9.2f}"
            f"{s.median('p99'):>9.2f}   {rounds}"
        )
    by_round = " ".join(f"{r:.2f}" for r in round_ratios(summaries))
    verdict = "PASS" if ratio >= TARGET_RATIO else "BELOW TARGET"
    print(
        f"\nratio keygen/bare (median req/s): {ratio:.2f}x   {verdict} (target >= "
        f"{TARGET_RATIO}x); by round: {by_round}",
        flush=True,
    )
    for other in summaries:
        if other not in (KEYGEN, BARE):
            print(
                f"ratio {other}/bare: {summaries[other].rps / summaries[BARE].rps:.2f}x; "
                f"keygen/{other}: {summaries[KEYGEN].rps / summaries[other].rps:.3f}x, by "
                f"round: {' '.join(f'{r:.3f}' for r in round_ratios(summaries, to=other))}",
                flush=True,
            )


# --- main ----------------------------------------------------------------------------------


def check_counts(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """Turn ``--concurrency`` (when there is one) into ints and require it and every named
    count or duration to be at least 1."""
    counts = [getattr(args, name) for name in names]
    if hasattr(args, "concurrency"):
        try:
            args.concurrency = [int(c) for c in args.concurrency.split(",")]
        except ValueError:
            parser.error("--concurrency takes comma-separated integers")
        counts += args.concurrency
    if min(counts) < 1:
        parser.error("every count and duration must be at least 1")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=10, help="seconds per round (10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of keygen, bare (3)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (50)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds per target (2)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    parser.add_argument(
        "--against",
        metavar="REV",
        help="also run the keygen of commit REV (git), in the same rounds: a change's cost",
    )
    args = parser.parse_args(argv)
    if min(args.duration, args.rounds, args.threads, args.warmup) < 1:
        parser.error("--duration, --rounds, --threads and --warmup must be at least 1")
    if args.connections < args.threads:
        parser.error("--connections must be at least --threads")
    return args


@contextmanager
def running(servers: Sequence[Server]) -> Iterator[None]:
    with ExitStack() as stack:
        for server in servers:
            stack.callback(server.stop)
            server.start()
        yield


def benchmark(args: argparse.Namespace, env: dict[str, Any]) -> dict[str, Any]:
    load = Load(ensure_wrk(), args.connections, args.threads)
    wrk_version = subprocess.run([load.wrk, "-v"], capture_output=True, text=True, timeout=10)
    env["wrk"] = wrk_version.stdout.splitlines()[0].split(" Copyright")[0]
    print(
        f"wrk:     {env['wrk']}: -t{args.threads} -c{args.connections} -d{args.duration}s "
        f"--timeout={WRK_TIMEOUT} -s {WRK_SCRIPT.relative_to(HERE.parent)}, body "
        f"{REQUEST_BODY.decode()}, {args.rounds} rounds keygen/bare after {args.warmup} s "
        "warm-up each",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="keygen-bench-") as tmp:
        servers = [keygen_server(Path(tmp)), bare_server(Path(tmp))]
        if args.against:
            name = f"{KEYGEN}@{args.against}"
            src = checkout(args.against, Path(tmp))
            servers.insert(1, keygen_server(Path(tmp), name=name, src=src))
        summaries = {server.name: Summary(server.name) for server in servers}
        with running(servers):
            for server in servers:
                print(f"server:  {server.name} on port {server.port}: {shlex.join(server.argv)}")
                preflight(server)
                load.run(server, args.warmup, 0)
            for round_ in range(1, args.rounds + 1):
                for server in servers:
                    run = measure(load, server, args.duration, round_)
                    summaries[server.name].runs.append(run)
                    print_run(run)
    ratio = summaries[KEYGEN].rps / summaries[BARE].rps
    print_summary(summaries, ratio)
    return {
        **env,
        "load": {
            "connections": args.connections,
            "threads": args.threads,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "warmup_s": args.warmup,
            "body": REQUEST_BODY.decode(),
        },
        "runs": [run.as_dict() for s in summaries.values() for run in s.runs],
        "summary": {name: s.as_dict() for name, s in summaries.items()},
        "ratio": round(ratio, 3),
        "ratio_by_round": round_ratios(summaries),
        "target_ratio": TARGET_RATIO,
        "verdict": "PASS" if ratio >= TARGET_RATIO else "BELOW TARGET",
    }


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through every cleanup, as Ctrl-C does


def run_benchmark(
    benchmark: Callable[[dict[str, Any]], dict[str, Any]], json_path: Path | None, **versions: str
) -> int:
    """A benchmark command from header to exit status: ``benchmark(env)`` with interrupts
    unwinding its cleanups, failures reported, and its results written to ``json_path``.
    ``versions`` adds the versions of packages only this benchmark uses to the header."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    env = environment()
    env["versions"].update(versions)
    print_header(env)
    try:
        results = benchmark(env)
    except BenchmarkError as exc:
        print(f"\nbenchmark FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 130
    if json_path:
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {json_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_benchmark(lambda env: benchmark(args, env), args.json)


if __name__ == "__main__":
    sys.exit(main())
