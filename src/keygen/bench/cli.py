"""``keygen bench`` on the command line: its options, their checks (exit 2), and the entry
that runs it (exit 1 when a target cannot be used).

Only the standard library is imported with the parser; the run (rich, uvloop, the cluster,
the chaos faults) when the command runs, so that ``keygen serve`` does not pay for them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from pathlib import Path
from urllib.parse import urlsplit

from keygen.arguments import instance_url, positive_int
from keygen.bench import TOPOLOGIES
from keygen.errors import ToolError

__all__ = ["add_bench_command", "bench"]

DEFAULT_RATES = "100,500,1000,2000"


def _rates(text: str) -> list[float]:
    """``--rates``: positive request rates, comma-separated, in the order given."""
    rates = []
    for part in (p.strip() for p in text.split(",")):
        try:
            rate = float(part.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not a rate (requests/s)") from None
        if not 0 < rate <= 1_000_000:
            raise argparse.ArgumentTypeError(f"a rate must be above 0 and at most 1e6: {part!r}")
        rates.append(rate)
    if not rates:
        raise argparse.ArgumentTypeError("no rate given")
    return rates


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < 86_400:
        raise argparse.ArgumentTypeError(f"must be above 0 (and below a day), got {text}")
    return value


def _problem(args: argparse.Namespace) -> str | None:
    """What the parser cannot see: a combination of options that cannot work."""
    if args.url is not None:
        if urlsplit(args.url).scheme != "http":
            return f"--url must be http://HOST:PORT (https is not supported): {args.url!r}"
    if args.failover and args.topology != "redis":
        return "--failover needs --topology redis (the faults act on the local cluster)"
    return None


def bench(args: argparse.Namespace) -> int:
    """Run ``keygen bench``: print the tables, write --json, return the exit status."""
    from rich.console import Console

    from keygen.bench.allocation import Plan
    from keygen.bench.run import BenchOptions, run_bench

    console = Console(stderr=True)
    if (problem := _problem(args)) is not None:
        console.print(f"[red]keygen bench: {problem}[/red]", highlight=False)
        return 2
    if args.url is None and args.topology is None:
        args.url = "http://127.0.0.1:8010"
    options = BenchOptions(
        url=args.url,
        topology=args.topology,
        plan=Plan(args.rates, args.saturate, args.duration, args.warmup),
        bare=args.bare,
        failover=args.topology == "redis" if args.failover is None else args.failover,
        failover_rate=args.failover_rate[0],
        down_after_ms=args.down_after_ms,
        connections=args.connections,
        size=args.size,
        namespace=args.namespace,
        api_key=args.api_key or None,
        timeout=args.timeout,
        command=shlex.join(["keygen", *sys.argv[1:]]),
    )
    previous = signal.signal(signal.SIGTERM, _interrupt)  # cleanup runs as on Ctrl-C
    try:
        report = run_bench(options, console)
    except ToolError as exc:
        console.print(f"[red]keygen bench: {exc}[/red]", highlight=False)
        return 1
    except KeyboardInterrupt:
        console.print("[red]keygen bench: interrupted; everything started was stopped[/red]")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(report.tables)
    if args.json is not None:
        args.json.write_text(json.dumps(report.document, indent=1) + "\n")
        console.print(f"figures in {args.json}", highlight=False)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def add_bench_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``bench`` to the ``keygen`` command."""
    p = subparsers.add_parser(
        "bench",
        help="open-loop load: the allocation and failover tables, beside a bare app",
        description="Open-loop load on POST /allocate (a fixed schedule; latency counted "
        "from each request's scheduled time), at each rate and up to saturation, against "
        "a running service or a topology started for the run, beside a bare ASGI app; with "
        "--topology redis, faults on the local cluster under load (benchmarks/README.md).",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--url",
        type=instance_url,
        help="measure the service running here, host:port or http://host:port (default: :8010)",
    )
    where.add_argument(
        "--topology", choices=TOPOLOGIES, help="start this one in a temp dir, torn down after"
    )
    p.add_argument(
        "--rates",
        type=_rates,
        default=_rates(DEFAULT_RATES),
        metavar="R,R,...",
        help=f"offered rates, requests a second (default {DEFAULT_RATES})",
    )
    p.add_argument(
        "--saturate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="then step up by 5,000 req/s from 5,000 until a target keeps less than 95%% of "
        "the offered rate or 99%% success (default: on)",
    )
    p.add_argument("--duration", type=_seconds, default=5.0, metavar="S", help="per step")
    p.add_argument(
        "--warmup", type=float, default=1.0, metavar="S", help="per target, not counted (0: none)"
    )
    p.add_argument("--connections", type=positive_int, default=50, metavar="N")
    p.add_argument("--size", type=positive_int, default=1000, metavar="N", help="IDs a request")
    p.add_argument("--namespace", default="bench", metavar="NS", help="default: bench")
    p.add_argument(
        "--api-key",
        default=os.environ.get("KEYGEN_API_KEY"),
        metavar="TOKEN",
        help="sent as a Bearer token (default: $KEYGEN_API_KEY)",
    )
    p.add_argument(
        "--timeout", type=_seconds, default=10.0, metavar="S", help="a request fails after"
    )
    p.add_argument(
        "--bare",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure the bare ASGI app beside the target (default: on)",
    )
    p.add_argument(
        "--failover",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the failover table (default: on with --topology redis)",
    )
    p.add_argument("--failover-rate", type=_rates, default=[500.0], metavar="R", help="default 500")
    p.add_argument(
        "--down-after-ms",
        type=positive_int,
        default=None,
        metavar="MS",
        help="the Sentinels' down-after-milliseconds (default 5000, the original's)",
    )
    p.add_argument("--json", type=Path, metavar="PATH", help="write every figure here")
    p.set_defaults(run=bench)
