"""``keygen cluster up|env|status|down|failover|roll``: the local topology from the command
line.

``up`` prints its progress on stderr and the environment on stdout; ``env`` prints that
environment again, so that ``eval "$(keygen cluster env --dir DIR)"`` points the current
shell at the running topology (with ``--secure``, it holds the ``keygen`` user's passwords).
"""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from keygen.cluster.layout import DEFAULT_BASE_PORT, DEFAULT_DOWN_AFTER_MS, Ports
from keygen.errors import ClusterError

if TYPE_CHECKING:  # imported by the commands, not by `keygen serve` building its parser
    from rich.console import Console

    from keygen.cluster.topology import LocalCluster

DEFAULT_DIR = Path(".keygen/cluster")


@functools.cache
def _err() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _progress(message: str) -> None:
    _err().print(f"[dim]•[/dim] {_escape(message)}")


def _fail(message: str) -> int:
    _err().print(f"[red]keygen cluster: {_escape(message)}[/red]")
    return 1


def _new_cluster(args: argparse.Namespace) -> LocalCluster:
    from keygen.cluster.topology import LocalCluster

    base: int | None = args.base_port
    if base is None:
        base = DEFAULT_BASE_PORT
        if busy := Ports.from_base(base, with_postgres=not args.no_postgres).busy():
            _progress(
                f"ports {busy} are taken (a system Redis?): using free ports instead; "
                "pass --base-port N to choose"
            )
            base = None
    elif base == 0:
        base = None
    return LocalCluster(
        args.dir,
        base,
        args.down_after_ms,
        with_postgres=not args.no_postgres,
        progress=_progress,
        secure=args.secure,
    )


def _reopened_cluster(args: argparse.Namespace, cluster: LocalCluster) -> LocalCluster:
    if (
        args.base_port not in (None, cluster.base_port)
        or (
            args.down_after_ms != DEFAULT_DOWN_AFTER_MS
            and args.down_after_ms != cluster.down_after_ms
        )
        or args.no_postgres != (cluster.postgres is None)
        or (args.secure and not cluster.secure)
    ):
        _progress(
            "this directory already holds a cluster: its recorded settings are used "
            "(`keygen cluster down --purge` first to start afresh)"
        )
    _progress(f"restarting the cluster recorded in {cluster.directory} (its data is kept)")
    return cluster


def cluster_up(args: argparse.Namespace) -> int:
    from keygen.cluster.topology import LocalCluster

    try:
        if LocalCluster.exists(args.dir):
            cluster = LocalCluster.load(args.dir, progress=_progress)
            if alive := cluster.running():
                return _fail(
                    f"a cluster is already running in {cluster.directory} ("
                    + ", ".join(f"{n.name} pid {n.pid}" for n in alive)
                    + "); see `keygen cluster status`, or `keygen cluster down` first"
                )
            cluster = _reopened_cluster(args, cluster)
        else:
            cluster = _new_cluster(args)
        cluster.up(timeout=args.timeout)
    except ClusterError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted; what was started has been stopped")
    _print_env(cluster)
    where = _escape(shlex.quote(str(args.dir)))
    _err().print(
        f"[green]cluster up[/green] in {_escape(str(cluster.directory))}. Next:\n"
        "  set the environment it printed on stdout, in this shell:\n"
        f'  eval "$(keygen cluster env --dir {where})"\n'
        "  keygen serve                          # the service, on this topology\n"
        f"  keygen cluster status --dir {where}\n"
        f"  keygen cluster down --dir {where}"
    )
    return 0


def _print_env(cluster: LocalCluster) -> None:
    for key, value in cluster.env().items():
        print(f"export {key}={shlex.quote(value)}")


def cluster_env(args: argparse.Namespace) -> int:
    from keygen.cluster.topology import LocalCluster

    if not LocalCluster.exists(args.dir):
        return _fail(f"no cluster recorded in {args.dir}")
    try:
        _print_env(LocalCluster.load(args.dir))
    except ClusterError as exc:
        return _fail(str(exc))
    return 0


def cluster_status(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from keygen.cluster.topology import LocalCluster

    if not LocalCluster.exists(args.dir):
        return _fail(f"no cluster recorded in {args.dir}")
    try:
        status = LocalCluster.load(args.dir).status()
    except ClusterError as exc:
        return _fail(str(exc))
    healthy = status.master is not None and all(p.state == "running" for p in status.processes)
    if args.json:
        print(json.dumps(status.as_dict(), indent=2))
        return 0 if healthy else 1
    table = Table(title=f"cluster: {status.directory}")
    for column in ("process", "port", "pid", "state", "role", "detail"):
        table.add_column(column, justify="right" if column in ("port", "pid") else "left")
    colours = {"running": "green", "paused": "yellow", "stopped": "red"}
    for p in status.processes:
        table.add_row(
            p.name,
            str(p.port),
            str(p.pid or "-"),
            f"[{colours[p.state]}]{p.state}[/]",
            p.role or "-",
            _escape(p.detail),
        )
    console = Console(highlight=False)
    console.print(table)
    if status.master is None:
        console.print("[red]current master: no Sentinel answers[/red]")
    else:
        host, port = status.master
        console.print(
            f"current master: {host}:{port} (named by {status.master_votes} of "
            f"{status.sentinels_answering} answering Sentinels)"
        )
    return 0 if healthy else 1


def cluster_down(args: argparse.Namespace) -> int:
    from keygen.cluster.topology import LocalCluster

    if not LocalCluster.exists(args.dir):
        return _fail(f"no cluster recorded in {args.dir}: nothing to stop")
    try:
        cluster = LocalCluster.load(args.dir, progress=_progress)
    except ClusterError as exc:
        return _fail(str(exc))
    failed = False
    if not cluster.running():
        _progress(f"nothing is running in {cluster.directory}")
    else:
        failed = any("could not stop" in line for line in cluster.down())
    if args.purge and not failed:
        shutil.rmtree(cluster.directory)
        _progress(f"removed {cluster.directory}")
    return 1 if failed else 0


def _maintain(args: argparse.Namespace, verb: str) -> int:
    from keygen.cluster import maintenance
    from keygen.cluster.topology import LocalCluster

    if not LocalCluster.exists(args.dir):
        return _fail(f"no cluster recorded in {args.dir}")
    try:
        cluster = LocalCluster.load(args.dir, progress=_progress)
        if verb == "failover":
            master = maintenance.planned_failover(cluster, args.timeout, _progress)
        else:
            master = maintenance.rolling_restart(cluster, args.timeout, _progress)
    except ClusterError as exc:
        return _fail(str(exc))
    _err().print(f"[green]{verb} done[/green]: the master is {master.name} (port {master.port})")
    return 0


def cluster_failover(args: argparse.Namespace) -> int:
    return _maintain(args, "failover")


def cluster_roll(args: argparse.Namespace) -> int:
    return _maintain(args, "roll")


def add_cluster_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cluster up|env|status|down|failover|roll`` to the ``keygen`` command."""
    parser = subparsers.add_parser(
        "cluster",
        help="run the local topology: Redis master + 2 replicas, 3 Sentinels, PostgreSQL",
    )
    commands = parser.add_subparsers(dest="cluster_command", required=True, metavar="COMMAND")

    def with_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--dir",
            type=Path,
            default=DEFAULT_DIR,
            help=f"the cluster's directory (default {DEFAULT_DIR})",
        )
        return p

    p = with_dir(
        commands.add_parser(
            "up", help="start the topology, wait until it is ready, print its environment"
        )
    )
    p.add_argument(
        "--base-port",
        type=int,
        default=None,
        metavar="N",
        help=f"Redis on N..N+2, Sentinels on N+20000..N+20002, PostgreSQL on N+3 "
        f"(default {DEFAULT_BASE_PORT}, or free ports if those are taken; "
        "0 = free ports)",
    )
    p.add_argument(
        "--down-after-ms",
        type=int,
        default=DEFAULT_DOWN_AFTER_MS,
        metavar="MS",
        help="Sentinel's down-after-milliseconds (default %(default)s)",
    )
    p.add_argument("--no-postgres", action="store_true", help="do not run PostgreSQL")
    p.add_argument(
        "--secure",
        action="store_true",
        help="TLS only on every node, ACL users with generated passwords, PostgreSQL over "
        "TLS with SCRAM (certificates in DIR/tls, passwords in DIR/credentials.json)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=90.0,
        help="seconds to wait for readiness (default %(default)s)",
    )
    p.set_defaults(run=cluster_up)

    p = with_dir(
        commands.add_parser(
            "env",
            help="print the environment that points Keygen at the cluster (`eval` it)",
        )
    )
    p.set_defaults(run=cluster_env)

    p = with_dir(
        commands.add_parser(
            "status", help="each process, its pid, role, and the master per the Sentinels"
        )
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=cluster_status)

    p = with_dir(commands.add_parser("down", help="stop exactly the processes `up` started"))
    p.add_argument(
        "--purge",
        action="store_true",
        help="then delete the directory (all Redis and PostgreSQL data)",
    )
    p.set_defaults(run=cluster_down)

    for verb, run, text in (
        (
            "failover",
            cluster_failover,
            "planned failover: replicas in sync, SENTINEL FAILOVER, wait until all agree",
        ),
        (
            "roll",
            cluster_roll,
            "rolling restart of the Redis processes: Sentinels, replicas, a planned "
            "failover, then the old master; one at a time",
        ),
    ):
        p = with_dir(commands.add_parser(verb, help=text))
        p.add_argument(
            "--timeout",
            type=float,
            default=60.0,
            help="seconds each wait may take (default %(default)s)",
        )
        p.set_defaults(run=run)
