"""The command line of ``keygen monitor`` (and ``scripts/monitor-id-service.py``), and the
loop that refreshes the instances and shows them, once an interval.

Only the standard library is imported with the parser; rich and httpx when the command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import ssl
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

from keygen.arguments import instance_url, positive_int
from keygen.monitor.fetch import (
    DEFAULT_INTERVAL,
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    DEFAULT_WINDOW,
    EXIT_HEALTHY,
    Instance,
    Options,
    refresh,
    verdict,
)
from keygen.monitor.render import render

if TYPE_CHECKING:
    import httpx
    from rich.console import Console

_WINDOW: Final = re.compile(r"^[1-9][0-9]*[smh]?$")  # seconds, or with a unit


# --- Running -----------------------------------------------------------------------------


async def _frames(
    client: httpx.AsyncClient,
    instances: Sequence[Instance],
    options: Options,
    show: Callable[[int], None],
) -> None:
    """Refresh the instances and ``show`` them, once an interval: an instance still reading
    when its interval is over keeps its figures until its request ends (or times out)."""
    loop = asyncio.get_running_loop()
    reading: dict[int, asyncio.Task[None]] = {}
    tick = loop.time()
    frame = 0
    try:
        while options.frames is None or frame < options.frames:
            for index, instance in enumerate(instances):
                if index not in reading or reading[index].done():
                    reading[index] = asyncio.create_task(refresh(client, instance, options))
            tick += options.interval
            await asyncio.wait(reading.values(), timeout=max(0.0, tick - loop.time()))
            for task in reading.values():
                if task.done():
                    task.result()  # a bug in refresh: raise it, do not hide it
            frame += 1
            show(frame)
            await asyncio.sleep(max(0.0, tick - loop.time()))
    finally:
        for task in reading.values():
            task.cancel()
        await asyncio.gather(*reading.values(), return_exceptions=True)


async def _run(options: Options, console: Console, verify: ssl.SSLContext | bool) -> int:
    import httpx
    from rich.live import Live

    instances = [Instance(url) for url in options.urls]
    headers = {"accept": "application/json"}
    if options.api_key:
        headers["authorization"] = f"Bearer {options.api_key}"
    async with httpx.AsyncClient(timeout=options.timeout, headers=headers, verify=verify) as client:
        if options.once:
            await asyncio.gather(*(refresh(client, i, options) for i in instances))
            console.print(render(instances, console.width))
            return verdict(instances)
        if not console.is_terminal:  # a pipe or a file: one snapshot after another
            await _frames(
                client,
                instances,
                options,
                lambda _: console.print(render(instances, console.width)),
            )
            return verdict(instances)
        footer = f" · every {options.interval:g} s · Ctrl-C quits"
        with Live(console=console, screen=True, auto_refresh=False, redirect_stderr=False) as live:
            await _frames(
                client,
                instances,
                options,
                lambda _: live.update(render(instances, console.width, footer), refresh=True),
            )
    return verdict(instances)


def monitor(args: argparse.Namespace) -> int:
    """Run ``keygen monitor``: one snapshot with ``--once``, else the live screen until Ctrl-C
    (or ``--frames`` refreshes)."""
    from rich.console import Console

    from keygen.client import tls_context

    options = Options(
        urls=tuple(dict.fromkeys(args.url or [DEFAULT_URL])),
        interval=args.interval,
        timeout=args.timeout,
        window=args.window,
        once=args.once,
        frames=args.frames,
        api_key=args.api_key or None,
        ca_certs=args.ca_certs,
        client_cert=args.client_cert,
        client_key=args.client_key,
    )
    if options.client_key is not None and options.client_cert is None:
        print("keygen monitor: --client-key needs --client-cert", file=sys.stderr)
        return 2
    from keygen.tls import client_tls_problem

    tls_files = (options.ca_certs, options.client_cert, options.client_key)
    if problem := client_tls_problem(*tls_files):
        print(f"keygen monitor: {problem}", file=sys.stderr)
        return 2
    cert: str | tuple[str, str] | None = options.client_cert
    if options.client_cert is not None and options.client_key is not None:
        cert = (options.client_cert, options.client_key)
    try:
        verify = tls_context(options.ca_certs or True, cert)
    except (OSError, ssl.SSLError) as exc:
        print(f"keygen monitor: cannot use the TLS files: {exc}", file=sys.stderr)
        return 2  # as for any other bad option
    try:
        return asyncio.run(_run(options, Console(highlight=False), verify))
    except KeyboardInterrupt:
        # Leaving the live screen is its normal end; a script's snapshot cut short is not.
        return 130 if options.once or options.frames else EXIT_HEALTHY


# --- The command line --------------------------------------------------------------------

DESCRIPTION: Final = (
    "A terminal dashboard of Keygen instances: per instance its status, layers and breakers, "
    "allocation rate, latency percentiles, the Redis master and failovers, the emergency "
    "reserve, firing alerts and trend sparklines, read from GET /health, /metrics/history and "
    "/alerts."
)
EPILOG: Final = (
    "exit status (with --once or --frames): 0 every instance healthy, 1 one degraded, "
    "2 one unreachable or unhealthy. Ctrl-C leaves the live screen with 0 (130 with --once or "
    "--frames)."
)


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number of seconds")
    return seconds


def _window(value: str) -> str:
    if not _WINDOW.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a window such as 30s, 5m, 1h or 300")
    return value


def add_monitor_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``keygen monitor`` and of ``scripts/monitor-id-service.py``."""
    parser.add_argument(
        "--url",
        action="append",
        type=instance_url,
        metavar="URL",
        help=f"an instance to watch; repeat for several (default: {DEFAULT_URL})",
    )
    parser.add_argument(
        "--interval",
        type=_seconds,
        default=DEFAULT_INTERVAL,
        metavar="SECONDS",
        help="seconds between refreshes (default: %(default)g)",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="seconds to wait for each answer before calling an instance unreachable "
        "(default: %(default)g)",
    )
    parser.add_argument(
        "--window",
        type=_window,
        default=DEFAULT_WINDOW,
        help="the span of the trend sparklines, from /metrics/history (default: %(default)s)",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="print one snapshot and exit with the instances' status (see below)",
    )
    parser.add_argument(
        "--frames",
        type=positive_int,
        metavar="N",
        help="stop after N refreshes and exit with the instances' status (default: run until "
        "Ctrl-C)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("KEYGEN_API_KEY"),
        metavar="TOKEN",
        help="an API key with the 'read' scope, for instances that require keys (default: "
        "$KEYGEN_API_KEY)",
    )
    parser.add_argument(
        "--ca-certs",
        metavar="FILE",
        help="CA certificates (PEM) to check https:// instances against (default: the system's)",
    )
    parser.add_argument(
        "--client-cert",
        metavar="FILE",
        help="a client certificate (PEM) for instances that require one (mTLS; docs/tls.md)",
    )
    parser.add_argument(
        "--client-key",
        metavar="FILE",
        help="the private key of --client-cert (default: in --client-cert's file)",
    )
    parser.set_defaults(run=monitor)


def add_monitor_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``keygen monitor``."""
    parser = commands.add_parser(
        "monitor",
        help="a terminal dashboard of one or several instances",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    add_monitor_arguments(parser)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """``keygen monitor`` as a program of its own (``scripts/monitor-id-service.py``)."""
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, epilog=EPILOG)
    add_monitor_arguments(parser)
    return monitor(parser.parse_args(argv))
