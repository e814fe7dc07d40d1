"""``keygen chaos`` on the command line: its options (``ChaosOptions``, whose defaults the
parser reads), and the entry that runs it.

Only the standard library and the fault registry are imported with the parser; the run's
modules (rich, uvloop, httpx, the cluster, the nemesis) when the command runs, so that
``keygen serve`` does not pay for them.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from keygen.chaos.faults import FAULT_KINDS, FAULTS, KIND_GROUPS, KNOWN_KINDS
from keygen.errors import ChaosError, ClusterError

__all__ = ["ChaosOptions", "add_chaos_command", "chaos"]


@dataclass
class ChaosOptions:
    """What ``keygen chaos`` runs (the command line's options)."""

    duration: float = 120.0
    instances: int = 2
    rate: float = 200.0
    seed: int = 0
    faults: Sequence[str] = FAULT_KINDS
    schedule: str | None = None  # "short": every kind once, then stop
    out: Path | None = None  # None: .keygen/chaos/<UTC time>
    clients: int = 64
    namespaces: Sequence[str] = ("default", "orders", "users")
    extra_env: dict[str, str] = field(default_factory=dict)
    secure: bool = False  # the topology of `keygen cluster up --secure`: TLS, ACLs, passwords

    def command(self) -> str:
        argv = [
            "keygen",
            "chaos",
            "--instances",
            str(self.instances),
            "--rate",
            f"{self.rate:g}",
            "--seed",
            str(self.seed),
            "--faults",
            ",".join(self.faults),
        ]
        argv += (
            ["--schedule", self.schedule] if self.schedule else ["--duration", f"{self.duration:g}"]
        )
        argv += ["--secure"] if self.secure else []
        argv += [f"--env={name}={value}" for name, value in self.extra_env.items()]
        return shlex.join(argv)


def _kinds(value: str) -> list[str]:
    """``--faults``: kinds and group names, comma-separated, each kind once."""
    kinds: list[str] = []
    for name in (k.strip() for k in value.split(",") if k.strip()):
        for kind in KIND_GROUPS.get(name, (name,)):
            if kind not in kinds:
                kinds.append(kind)
    unknown = [k for k in kinds if k not in FAULTS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown fault kinds {unknown}; known: all (the single kinds), overlapping "
            f"(two at once), {', '.join(KNOWN_KINDS)}"
        )
    return kinds


def _env_pair(value: str) -> tuple[str, str]:
    name, sep, setting = value.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{value!r} is not NAME=VALUE")
    return name, setting


def chaos(args: argparse.Namespace) -> int:
    """Run ``keygen chaos``: print the report, return the exit status."""
    from rich.console import Console
    from rich.markup import escape

    from keygen.chaos.report import markdown
    from keygen.chaos.run import run_chaos, sigterm

    # The load's clients retry by design (the report counts every attempt): stamina's
    # warning per retry would drown the live view.
    logging.getLogger("stamina").setLevel(logging.ERROR)

    console = Console(stderr=True)
    if args.instances < 2 and any(FAULTS[kind].kills_instance for kind in args.faults):
        console.print(
            "[red]keygen chaos: instance-kill needs --instances 2 or more (the "
            "clients fail over to another instance)[/red]"
        )
        return 2
    options = ChaosOptions(
        duration=args.duration,
        instances=args.instances,
        rate=args.rate,
        seed=args.seed,
        faults=args.faults,
        schedule=args.schedule,
        out=args.out,
        extra_env=dict(args.env),
        secure=args.secure,
    )
    # SIGTERM (a CI job's timeout, `kill`) stops the run as Ctrl-C does: every process it
    # started is stopped and the report of the run so far is written.
    previous = signal.signal(signal.SIGTERM, sigterm)
    try:
        run = run_chaos(options, console)
    except (ChaosError, ClusterError) as exc:
        console.print(f"[red]keygen chaos: {escape(str(exc))}[/red]")
        return 2
    except KeyboardInterrupt:
        console.print("[red]keygen chaos: interrupted; everything started was stopped[/red]")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    report = run.report
    print(markdown(report))
    colour = "green" if run.passed else "red"
    console.print(
        f"[{colour}]{'PASSED' if run.passed else 'FAILED'}[/{colour}]: "
        f"{report['acknowledged']:,} acknowledged, {report['checker']['duplicate_ids']} "
        f"duplicate IDs, {report['unexpected_failures']} unexpected failures, "
        f"{report['faults_failed']} faults not applied; report in {run.out}",
        highlight=False,
    )
    if run.interrupted:
        console.print("[red]interrupted: the report covers the run until then[/red]")
        return 130
    return 0 if run.passed else 1


def add_chaos_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``chaos`` to the ``keygen`` command."""
    defaults = ChaosOptions()
    p = subparsers.add_parser(
        "chaos",
        help="faults under load on a local topology, then the overlap checker",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=defaults.duration,
        metavar="S",
        help="seconds of load with random faults (default %(default)s)",
    )
    p.add_argument(
        "--instances",
        type=int,
        default=defaults.instances,
        metavar="N",
        help="keygen serve instances (default %(default)s)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=defaults.rate,
        metavar="R",
        help="requests per second, open loop (default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=defaults.seed, help="seeds the plan and the load")
    p.add_argument(
        "--faults",
        type=_kinds,
        default=list(defaults.faults),
        metavar="KINDS",
        help="comma-separated fault kinds and groups: all (the single kinds, "
        "the default), overlapping (two at once), " + ", ".join(KNOWN_KINDS),
    )
    p.add_argument(
        "--schedule",
        choices=["short"],
        default=defaults.schedule,
        help="short: every kind once, one after another (~2 min; CI)",
    )
    p.add_argument(
        "--secure",
        action="store_true",
        help="run on the secure topology (`keygen cluster up --secure`): every link TLS, "
        "ACL users and passwords; the proxies forward the encrypted bytes",
    )
    p.add_argument(
        "--env",
        action="append",
        type=_env_pair,
        default=list(defaults.extra_env.items()),
        metavar="NAME=VALUE",
        help="an extra setting for every instance, e.g. "
        "KEYGEN_RESERVE=off to see the all-down fault without the reserve "
        "(repeatable)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=defaults.out,
        metavar="DIR",
        help="where everything goes (default .keygen/chaos/<UTC time>)",
    )
    p.set_defaults(run=chaos)
