"""``keygen backup`` and ``keygen restore``."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from keygen.backup import backup, parse_floors, restore
from keygen.config import Settings
from keygen.errors import KeygenError

err = Console(stderr=True, soft_wrap=True)  # an error on one line, however long


def _progress(message: str) -> None:
    err.print(f"[dim]·[/dim] {escape(message)}")


def backup_command(args: argparse.Namespace) -> int:
    try:
        manifest = asyncio.run(backup(Settings(), args.out, _progress))
    except KeygenError as exc:
        err.print(f"[red]keygen backup: {escape(str(exc))}[/red]")
        return 1
    err.print(
        f"[green]backup of the {manifest['ledger']} ledger written to {args.out}[/green] "
        f"({len(manifest['counters'])} namespaces, {manifest['redis_leases']} Redis leases)"
    )
    return 0


def restore_command(args: argparse.Namespace) -> int:
    try:
        floors = parse_floors(args.floor)
        changes = asyncio.run(restore(Settings(), args.backup, floors, _progress, force=args.force))
    except KeygenError as exc:
        err.print(f"[red]keygen restore: {escape(str(exc))}[/red]")
        return 1
    table = Table(title=f"restored from {args.backup}")
    for column in ("namespace", "last ID in the backup", "last ID now"):
        table.add_column(column, justify="left" if column == "namespace" else "right")
    for namespace, (restored, after) in changes.items():
        table.add_row(namespace, f"{restored:,}", f"{after:,}")
    Console().print(table)
    return 0


def add_backup_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser("backup", help="back up the ledger (and Redis's leases)")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="a new (or empty) folder for the backup",
    )
    p.set_defaults(run=backup_command)

    p = commands.add_parser(
        "restore", help="restore a backup, raising every counter above what was issued since"
    )
    p.add_argument("backup", type=Path, metavar="DIR", help="a folder written by keygen backup")
    p.add_argument(
        "--floor",
        action="append",
        default=[],
        metavar="[NAMESPACE=]N",
        help="the highest ID that may have been issued (all namespaces, or one); repeatable",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="restore even though something shows instances running on the ledger (its data "
        "dir's locks, other sessions on its PostgreSQL database)",
    )
    p.set_defaults(run=restore_command)


__all__ = ["add_backup_commands"]
