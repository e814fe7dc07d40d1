"""``keygen keys create|list|revoke``: the API keys in the ledger (``keygen/auth*.py``), and the
warning ``keygen serve`` gives when it listens beyond loopback without requiring keys."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import time
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from keygen.auth_scopes import parse_scope
from keygen.auth_tokens import load_secret, new_key
from keygen.config import Settings, describe
from keygen.errors import KeygenError
from keygen.ledgers import open_ledger
from keygen.ledgers.base import ApiKeyRecord, KeyUsage
from keygen.rates import MAX_RATE, Rates
from keygen.redact import printable

__all__ = ["add_keys_commands", "auth_warning", "is_loopback", "key_usage"]

err = Console(stderr=True, soft_wrap=True)

#: How long ``keygen serve`` spends finding out whether keys exist, for its warning.
KEYS_PEEK_TIMEOUT = 3.0
#: A table's width when it is not shown on a terminal: wider than any row.
_UNBOUNDED_WIDTH = 1_000_000


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        err.print(f"[red]keygen: invalid configuration[/red]: {escape('; '.join(describe(exc)))}")
        raise SystemExit(2) from None


def _print_table(table: Table) -> None:
    """On a terminal, as wide as it is; into a pipe or a file, every value in full on one
    line (rich would cut them to 80 columns, ending them with an ellipsis)."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=_UNBOUNDED_WIDTH, no_color=True, soft_wrap=False)
    console.print(table)


def _when(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _as_json(record: ApiKeyRecord) -> dict[str, object]:
    return {
        "id": record.id,
        "name": record.name,
        "scopes": list(record.scopes),
        "created_at": _when(record.created_at),
        "revoked_at": _when(record.revoked_at) or None,
        "limits": dict(record.rates.items()),
    }


async def _add(settings: Settings, record: ApiKeyRecord) -> None:
    ledger = await open_ledger(settings, tool=True)
    try:
        await ledger.add_api_key(record)
    finally:
        await ledger.aclose()


async def _list(settings: Settings) -> list[ApiKeyRecord]:
    ledger = await open_ledger(settings, tool=True)
    try:
        return await ledger.api_keys()
    finally:
        await ledger.aclose()


async def _revoke(settings: Settings, key_id: str) -> bool:
    ledger = await open_ledger(settings, tool=True)
    try:
        return await ledger.revoke_api_key(key_id)
    finally:
        await ledger.aclose()


def create(args: argparse.Namespace) -> int:
    settings = _settings()
    try:
        rates = Rates(args.requests_per_second, args.ids_per_second, args.ids_per_day)
        token, record = new_key(args.name, args.scope, load_secret(settings), time.time(), rates)
        asyncio.run(_add(settings, record))
    except (KeygenError, OSError, ValueError) as exc:
        err.print(f"[red]keygen keys create: {escape(str(exc))}[/red]")
        return 1
    if args.json:
        print(json.dumps({**_as_json(record), "token": token}))
    else:
        print(token)
        err.print(
            f"key {record.id} ({escape(printable(record.name))}), scopes "
            f"{' '.join(record.scopes)}, limits {record.rates.describe()}: the token above is "
            "shown only this once; the ledger keeps only its keyed hash."
        )
    if settings.auth == "off":
        err.print("[yellow]keygen: KEYGEN_AUTH=off: no instance checks keys[/yellow]")
    return 0


def list_keys(args: argparse.Namespace) -> int:
    try:
        records = asyncio.run(_list(_settings()))
    except KeygenError as exc:
        err.print(f"[red]keygen keys list: {escape(str(exc))}[/red]")
        return 1
    if args.json:
        print(json.dumps([_as_json(r) for r in records]))
        return 0
    table = Table(title="API keys")
    for column in ("id", "name", "scopes", "limits", "created", "revoked"):
        table.add_column(column)
    for r in records:
        table.add_row(
            r.id,
            escape(printable(r.name)),
            escape(printable(" ".join(r.scopes))),
            r.rates.describe(),
            _when(r.created_at),
            _when(r.revoked_at),
        )
    _print_table(table)
    return 0


def revoke(args: argparse.Namespace) -> int:
    settings = _settings()
    try:
        revoked = asyncio.run(_revoke(settings, args.id))
    except KeygenError as exc:
        err.print(f"[red]keygen keys revoke: {escape(str(exc))}[/red]")
        return 1
    if not revoked:
        err.print(f"[red]keygen keys revoke: no active key {escape(args.id)!r}[/red]")
        return 1
    err.print(
        f"key {escape(args.id)} revoked: running instances refuse it within "
        f"{settings.auth_refresh_interval:g} s (KEYGEN_AUTH_REFRESH_INTERVAL)"
    )
    return 0


async def _usage(settings: Settings, since_day: str) -> tuple[list[ApiKeyRecord], list[KeyUsage]]:
    ledger = await open_ledger(settings, inspect=True)
    try:
        return await ledger.api_keys(), await ledger.key_usage(since_day)
    finally:
        await ledger.aclose()


def key_usage(settings: Settings, *, days: int, as_json: bool) -> int:
    """``keygen ledger status --keys``: what each key allocated on each of the last days."""
    since = (datetime.now(UTC) - timedelta(days=max(1, days) - 1)).strftime("%Y-%m-%d")
    try:
        records, usage = asyncio.run(_usage(settings, since))
    except KeygenError as exc:
        err.print(f"[red]keygen ledger status: {escape(str(exc))}[/red]")
        return 1
    names = {r.id: r.name for r in records}
    rows = [
        {
            "day": u.day,
            "key_id": u.key_id,
            "name": names.get(u.key_id, ""),
            "requests": u.requests,
            "ids": u.ids,
        }
        for u in usage
    ]
    if as_json:
        print(json.dumps(rows))
        return 0
    table = Table(title=f"usage per API key since {since} (UTC days)")
    for column in ("day", "key", "name", "requests", "IDs"):
        table.add_column(column, justify="right" if column in ("requests", "IDs") else "left")
    for row in rows:
        table.add_row(
            str(row["day"]),
            str(row["key_id"]),
            escape(printable(str(row["name"]))),
            f"{row['requests']:,}",
            f"{row['ids']:,}",
        )
    _print_table(table)
    return 0


def _scope(text: str) -> str:
    try:
        return parse_scope(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= MAX_RATE:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_RATE}, got {value}")
    return value


def add_keys_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``keygen keys``."""
    p = commands.add_parser("keys", help="API keys: create, list, revoke")
    keys = p.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")

    p = keys.add_parser(
        "create",
        help="create a key and print its token (shown only this once)",
        description="Create an API key in the ledger and print its token. Scopes: "
        "allocate:<namespace glob> (allocate:orders, allocate:shop-*, allocate:*), read "
        "(/health in detail, /metrics, /dashboard, ...), admin (everything).",
    )
    p.add_argument("--name", required=True, help="who or what the key is for")
    p.add_argument(
        "--scope",
        action="append",
        required=True,
        type=_scope,
        help="a scope; repeat for several",
    )
    for flag, what in (
        ("--requests-per-second", "requests a second"),
        ("--ids-per-second", "IDs a second"),
        ("--ids-per-day", "IDs a UTC day"),
    ):
        p.add_argument(
            flag,
            type=_rate,
            metavar="N",
            help=f"at most N {what} with this key, all instances together (429 past it)",
        )
    p.add_argument(
        "--json", action="store_true", help="print JSON: id, name, token, scopes, limits"
    )
    p.set_defaults(run=create)

    p = keys.add_parser("list", help="every key, revoked ones included (never a token)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=list_keys)

    p = keys.add_parser("revoke", help="revoke a key: instances refuse it within seconds")
    p.add_argument("id", help="the key's id (keygen keys list)")
    p.set_defaults(run=revoke)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (``keygen serve --host``) is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


async def _key_count(settings: Settings) -> int | None:
    """Keys in the ledger (revoked ones too); None when it cannot be told in time."""
    try:
        async with asyncio.timeout(KEYS_PEEK_TIMEOUT):
            ledger = await open_ledger(settings, inspect=True)
            try:
                return len(await ledger.api_keys())
            finally:
                await ledger.aclose()
    except (KeygenError, TimeoutError, OSError):
        return None


def auth_warning(settings: Settings, host: str) -> str | None:
    """What ``keygen serve --host host`` must say at start-up: that anyone who can reach it
    may allocate and read everything (None when keys are required, or it is loopback only)."""
    if is_loopback(host) or settings.auth == "required":
        return None
    if settings.auth == "off":
        why = "KEYGEN_AUTH=off"
    else:
        count = asyncio.run(_key_count(settings))
        if count:
            return None
        why = (
            "KEYGEN_AUTH=auto and the ledger holds no API key"
            if count == 0
            else "KEYGEN_AUTH=auto and the ledger's keys could not be read"
        )
    plain = (
        ""
        if settings.ssl_certfile is not None
        else " It also speaks plain HTTP: keys and ranges would cross the network readable; "
        "serve HTTPS (--ssl-certfile, --ssl-keyfile) or end TLS in front of it; docs/tls.md."
    )
    return (
        f"keygen serve listens on {host}, which is not loopback, and requires no API key "
        f"({why}): anyone who can reach the port may allocate in every namespace and read "
        "every internal detail. Create a key (keygen keys create --name NAME --scope "
        f"allocate:*) or set KEYGEN_AUTH=required; docs/security.md.{plain}"
    )
