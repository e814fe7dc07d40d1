"""The ``keygen`` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import dataclasses
import json
import os
import shutil
import signal
import ssl
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from keygen import __version__
from keygen.arguments import instance_url, positive_int
from keygen.backup_cli import add_backup_commands
from keygen.bench.cli import add_bench_command
from keygen.chaos.cli import add_chaos_command
from keygen.checker import check, read_records
from keygen.client import DEFAULT_URL, KeygenAPIError, KeygenClient
from keygen.cluster.cli import add_cluster_commands
from keygen.config import Settings, describe
from keygen.constants import DEFAULT_HOST, DEFAULT_PORT
from keygen.errors import LedgerUnavailable
from keygen.keys_cli import add_keys_commands, auth_warning, key_usage
from keygen.ledgers import open_ledger
from keygen.ledgers.base import NamespaceStatus
from keygen.monitor import add_monitor_command
from keygen.redact import redact_url
from keygen.tls import CERT_REQS, apply_tls_flags, client_tls_problem, tls_problem

if TYPE_CHECKING:
    from keygen.audit import AuditVerdict

err = Console(stderr=True, soft_wrap=True)  # a message is not broken across lines


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(describe(exc))
        err.print(f"[red]keygen: invalid configuration[/red]: {escape(problems)}")
        raise SystemExit(2) from None


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging, with times, and the service's own loggers at ``level`` (they would
    otherwise reach only Python's last-resort handler: warnings only, and no time)."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    for formatter in config["formatters"].values():
        formatter["fmt"] = "%(asctime)s " + formatter["fmt"]
    config["formatters"]["keygen"] = {
        "format": "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
    }
    config["handlers"]["keygen"] = {
        "class": "logging.StreamHandler",
        "formatter": "keygen",
        "stream": "ext://sys.stderr",
    }
    config["loggers"]["keygen"] = {
        "handlers": ["keygen"],
        "level": level.upper(),
        "propagate": False,
    }
    return config


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from keygen.api.protocol import raise_descriptor_limit

    apply_tls_flags(args)
    settings = _settings()  # fail here, clearly, rather than in every worker
    if (problem := tls_problem(settings)) is not None:
        err.print(f"[red]keygen: invalid configuration[/red]: {escape(problem)}")
        return 2
    if (soft := raise_descriptor_limit(settings.max_connections)) is not None:
        err.print(
            f"[yellow]keygen: KEYGEN_MAX_CONNECTIONS={settings.max_connections} needs more "
            f"file descriptors than the limit, {soft}[/yellow]"
        )
    if (warning := auth_warning(settings, args.host)) is not None:
        err.print(f"[bold red]WARNING: {escape(warning)}[/bold red]")
    with _run_dir(settings):
        uvicorn.run(
            "keygen.api.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            # With TLS, uvloop's with a bound on the handshake (uvicorn passes none: 60 s).
            loop="keygen.tls:event_loop" if settings.ssl_certfile else "uvloop",
            # httptools with the edge's limits: connections, header size and time, pipelining.
            http="keygen.api.protocol:KeygenHttpProtocol",
            timeout_keep_alive=max(1, round(settings.keepalive_timeout)),
            log_level=settings.log_level,
            log_config=_log_config(settings.log_level),
            access_log=settings.access_log,
            # Long enough for a request whose body arrives at the last moment to get its answer.
            timeout_graceful_shutdown=int(settings.body_timeout + settings.allocation_timeout) + 1,
            ssl_certfile=settings.ssl_certfile,
            ssl_keyfile=settings.ssl_keyfile,
            ssl_ca_certs=settings.ssl_ca_certs,
            ssl_cert_reqs=CERT_REQS[settings.ssl_client_cert],
        )
    return 0


@contextlib.contextmanager
def _run_dir(settings: Settings) -> Iterator[None]:
    """A fresh run directory for this instance's workers to share their figures in (in
    memory, on /dev/shm, where there is one), removed when the service stops; or the one
    ``KEYGEN_RUN_DIR`` names, kept."""
    if settings.run_dir is not None:
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        yield
        return
    shm = Path("/dev/shm")
    where = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    _remove_stale_run_dirs(where)
    run_dir = Path(tempfile.mkdtemp(prefix=RUN_DIR_PREFIX, dir=where))
    (run_dir / RUN_DIR_OWNER).write_text(str(os.getpid()))
    os.environ["KEYGEN_RUN_DIR"] = str(run_dir)  # the workers read their settings from it
    # uvicorn re-raises the SIGTERM it drained on once it returns: as an exception, so that
    # the run directory is removed on the way out (the default action would skip that).
    signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


RUN_DIR_PREFIX = "keygen-run-"
RUN_DIR_OWNER = "owner"


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(0)  # drained and stopped, as asked


def _remove_stale_run_dirs(where: Path) -> None:
    """Run directories of instances that are gone (killed: nothing removed theirs)."""
    for stale in where.glob(f"{RUN_DIR_PREFIX}*"):
        try:
            pid = int((stale / RUN_DIR_OWNER).read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(stale, ignore_errors=True)
        except (OSError, ValueError):
            continue  # another user's, or being made right now: not ours to judge


def allocate(args: argparse.Namespace) -> int:
    if args.client_key is not None and args.client_cert is None:
        err.print("[red]keygen: --client-key needs --client-cert[/red]")
        return 2
    if problem := client_tls_problem(args.ca_certs, args.client_cert, args.client_key):
        err.print(f"[red]keygen: {escape(problem)}[/red]")
        return 2
    cert: str | tuple[str, str] | None = args.client_cert
    if args.client_cert is not None and args.client_key is not None:
        cert = (args.client_cert, args.client_key)
    try:
        client = KeygenClient(
            args.url,
            retries=0,
            api_key=args.api_key or None,
            verify=args.ca_certs or True,
            cert=cert,
        )
    except (OSError, ssl.SSLError) as exc:
        err.print(f"[red]keygen: cannot use the TLS files: {escape(str(exc))}[/red]")
        return 2
    try:
        with client:
            allocated = client.allocate(size=args.size, namespace=args.namespace)
    except KeygenAPIError as exc:
        err.print(f"[red]keygen: {escape(str(exc))}[/red]")
        return 1
    except httpx.TransportError as exc:
        err.print(f"[red]keygen: cannot reach {escape(args.url)}: {escape(str(exc))}[/red]")
        return 1
    print(msgspec.json.encode(allocated).decode())
    return 0


def verify(args: argparse.Namespace) -> int:
    try:
        verdict = check(read_records(args.files))
    except (OSError, ValueError) as exc:
        err.print(f"[red]keygen verify: {escape(str(exc))}[/red]")
        return 2
    for first, second in verdict.overlaps[:20]:
        print(
            f"overlap in {first.namespace!r}: {first.start}..{first.end} "
            f"and {second.start}..{second.end}"
        )
    for record in verdict.bad_sizes[:20]:
        print(f"wrong size: {record}")
    for record in verdict.out_of_bounds[:20]:
        print(f"out of bounds: {record}")
    print(verdict.summary())
    return 0 if verdict.ok else 1


async def _ledger_status(settings: Settings) -> list[NamespaceStatus]:
    # Inspecting changes nothing: no migration, one connection.
    ledger = await open_ledger(settings, inspect=True)
    try:
        return await ledger.status()
    finally:
        await ledger.aclose()


def ledger_status(args: argparse.Namespace) -> int:
    settings = _settings()
    if args.keys:
        return key_usage(settings, days=args.days, as_json=args.json)
    if settings.database_url is not None:
        where = f"postgresql ({redact_url(settings.database_url)})"
    else:
        where = f"sqlite ({settings.data_dir})"
    try:
        statuses = asyncio.run(_ledger_status(settings))
    except LedgerUnavailable as exc:
        err.print(f"[red]keygen ledger status: {escape(str(exc))}[/red]")
        return 1
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "namespace": s.namespace,
                        "next_id": s.next_id,
                        "headroom": s.headroom,
                        "grants": s.grants,
                    }
                    for s in statuses
                ]
            )
        )
        return 0
    table = Table(title=f"ledger: {where}")
    for column in ("namespace", "next ID", "headroom to 2^63-1", "grants"):
        table.add_column(column, justify="left" if column == "namespace" else "right")
    for s in statuses:
        table.add_row(s.namespace, f"{s.next_id:,}", f"{s.headroom:,}", f"{s.grants:,}")
    Console().print(table)
    return 0


def alert_rules(args: argparse.Namespace) -> int:
    from keygen.alerts import prometheus_rules

    rules = prometheus_rules()
    if args.out is None:
        sys.stdout.write(rules)
    else:
        args.out.write_text(rules)
    return 0


async def _audit(settings: Settings) -> AuditVerdict:
    from keygen.audit import audit_ledger

    ledger = await open_ledger(settings, inspect=True)
    try:
        return await audit_ledger(ledger)
    finally:
        await ledger.aclose()


def audit(args: argparse.Namespace) -> int:
    try:
        verdict = asyncio.run(_audit(_settings()))
    except LedgerUnavailable as exc:
        err.print(f"[red]keygen audit: {escape(str(exc))}[/red]")
        return 2
    if args.json:
        print(
            json.dumps(
                {
                    "ok": verdict.ok,
                    "grants": verdict.grants,
                    "namespaces": verdict.namespaces,
                    "violations": [vars(v) for v in verdict.violations],
                }
            )
        )
    else:
        for violation in verdict.violations[:50]:
            print(f"{violation.kind} in {violation.namespace!r}: {violation.detail}")
        print(verdict.summary())
    return 0 if verdict.ok else 1


def config_check(args: argparse.Namespace) -> int:
    from keygen.checkup import checkup

    checks = asyncio.run(checkup(_settings()))
    if args.json:
        print(json.dumps([dataclasses.asdict(c) for c in checks]))
    else:
        table = Table(title="keygen config check")
        for column in ("part", "", "detail"):
            table.add_column(column)
        for c in checks:
            verdict = (
                "[red]FAIL[/red]"
                if not c.ok
                else "[yellow]WARN[/yellow]"
                if c.warning
                else "[green]ok[/green]"
            )
            table.add_row(escape(c.part), verdict, escape(c.detail))
        Console().print(table)
    return 0 if all(c.ok for c in checks) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keygen", description="Keygen: unique integer ID ranges, never handed out twice."
    )
    parser.add_argument("--version", action="version", version=f"keygen {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser(
        "serve",
        help="run the HTTP service",
        description="Run the HTTP service; the rest of its settings come from the environment "
        "(README: Configuration; `keygen config check` validates them).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--host", default=DEFAULT_HOST, help="address to listen on")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on")
    p.add_argument("--workers", type=positive_int, default=1, help="worker processes")
    tls = p.add_argument_group("TLS (docs/tls.md); each flag overrides its KEYGEN_SSL_* setting")
    for flag, what in (
        ("--ssl-certfile", "the service's certificate chain (PEM): HTTPS instead of HTTP"),
        ("--ssl-keyfile", "the private key of --ssl-certfile (PEM, unencrypted)"),
        ("--ssl-ca-certs", "CA certificates (PEM) that client certificates are checked against"),
    ):
        tls.add_argument(flag, type=Path, default=argparse.SUPPRESS, metavar="FILE", help=what)
    tls.add_argument(
        "--ssl-client-cert",
        choices=tuple(CERT_REQS),
        default=argparse.SUPPRESS,
        help="mTLS: 'required' refuses a client without a certificate signed by "
        "--ssl-ca-certs, 'optional' checks one when given, 'none' asks for none",
    )
    p.set_defaults(run=serve)

    p = commands.add_parser("allocate", help="ask a running service for a range")
    p.add_argument("--size", type=int, help="IDs to allocate (default: the server's ID_BLOCK_SIZE)")
    p.add_argument("--namespace", help="namespace (default: 'default')")
    p.add_argument(
        "--url",
        type=instance_url,
        default=DEFAULT_URL,
        help="the service's base URL; host:port stands for http://host:port (default: %(default)s)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("KEYGEN_API_KEY"),
        metavar="TOKEN",
        help="an API key with an allocate:<glob> scope (default: $KEYGEN_API_KEY)",
    )
    p.add_argument(
        "--ca-certs",
        metavar="FILE",
        help="CA certificates (PEM) to check an https:// service against (default: the system's)",
    )
    p.add_argument(
        "--client-cert",
        metavar="FILE",
        help="a client certificate (PEM) for a service that requires one (mTLS; docs/tls.md)",
    )
    p.add_argument(
        "--client-key",
        metavar="FILE",
        help="the private key of --client-cert (default: in --client-cert's file)",
    )
    p.set_defaults(run=allocate)

    p = commands.add_parser("verify", help="check files of acknowledged ranges for overlaps")
    p.add_argument(
        "files",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="JSON lines, one POST /allocate response per line",
    )
    p.set_defaults(run=verify)

    p = commands.add_parser("ledger", help="inspect the ledger")
    ledger_commands = p.add_subparsers(dest="ledger_command", required=True, metavar="COMMAND")
    p = ledger_commands.add_parser("status", help="namespaces, next IDs, headroom, grants")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--keys", action="store_true", help="the usage per API key instead: requests and IDs a day"
    )
    p.add_argument("--days", type=int, default=7, help="with --keys: the last DAYS UTC days (7)")
    p.set_defaults(run=ledger_status)

    p = commands.add_parser(
        "audit",
        help="check the ledger's audit trail: overlapping grants, grants above the counter; "
        "exit 1 on a violation",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=audit)

    p = commands.add_parser("config", help="the settings")
    config_commands = p.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    p = config_commands.add_parser(
        "check", help="validate the settings and ask every configured layer; exit 1 on a problem"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=config_check)

    p = commands.add_parser("alerts", help="the alert rules")
    alert_commands = p.add_subparsers(dest="alerts_command", required=True, metavar="COMMAND")
    p = alert_commands.add_parser(
        "rules", help="the rules as a Prometheus rule file (deploy/prometheus/alerts.yml)"
    )
    p.add_argument("--out", type=Path, metavar="FILE", help="write it here (default: stdout)")
    p.set_defaults(run=alert_rules)

    add_cluster_commands(commands)
    add_chaos_command(commands)
    add_backup_commands(commands)
    add_monitor_command(commands)
    add_keys_commands(commands)
    add_bench_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
