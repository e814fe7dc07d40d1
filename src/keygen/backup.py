"""Backups of the ledger, and restores that can never move a counter backwards.

A backup is a folder: the ledger (a SQLite online backup, or ``pg_dump`` of Keygen's
tables), the leases Redis holds (``redis-leases.json``, after a ``BGSAVE`` on the master so
Redis has a fresh snapshot of its own) and ``manifest.json``.

Restoring an old ledger rewinds its counters to the day of the backup, and every ID issued
since would be issued again. So a restore first collects evidence of the highest ID any layer
may have issued, per namespace — the counters of the ledger being replaced (which cover every
grant: leases, direct grants, reserves), the leases in Redis, the emergency-reserve journals
in the data dir, and floors the operator gives — then restores, then raises every counter
above that evidence (``Ledger.advance_to``, which only moves forward). With no evidence at all
(the ledger being replaced is unreachable or empty, no Redis, no journal) it refuses and asks
for a floor rather than guess.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from keygen import __version__
from keygen.config import Settings
from keygen.constants import LEASE_BASE, LEASE_LENGTH, REDIS_LEASE_KEY
from keygen.dispensers.journal import JOURNAL_NAME
from keygen.dispensers.journal_records import replay
from keygen.errors import BackupError, KeygenError
from keygen.ledgers import open_ledger
from keygen.ledgers.ledger_identity import IDENTITY_FILENAME
from keygen.ledgers.sqlite import LEDGER_FILENAME
from keygen.live_instances import live_instances
from keygen.progress import Progress
from keygen.redact import redact_text

MANIFEST = "manifest.json"
REDIS_LEASES = "redis-leases.json"
PG_DUMP_FILE = "ledger.pgdump"
#: Seconds a Redis command of a backup may take (BGSAVE, SCAN, HGETALL).
REDIS_TOOL_TIMEOUT = 5.0
#: The tables a PostgreSQL backup holds: Keygen's own, nothing else of the database.
PG_TABLES = "keygen_*"
_NOTHING_YET = "no instance has created it yet, so there is nothing to back up"


@dataclass
class Evidence:
    """The highest ID each namespace may have issued, and where each figure came from."""

    floors: dict[str, int] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)

    def raise_to(self, namespace: str, last_id: int) -> None:
        if last_id > self.floors.get(namespace, 0):
            self.floors[namespace] = last_id


# -- backup ------------------------------------------------------------------------------


async def backup(settings: Settings, out: Path, progress: Progress) -> dict[str, Any]:
    """Write a backup of the ledger (and Redis's leases) into the new folder ``out``."""
    if out.exists() and any(out.iterdir()):
        raise BackupError(f"{out} exists and is not empty")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return await _backup_into(settings, out, progress)
    except BaseException:
        # A folder holding part of a backup would pass for one: none is left behind.
        for path in out.iterdir():
            path.unlink()
        if created:
            out.rmdir()
        raise


async def _backup_into(settings: Settings, out: Path, progress: Progress) -> dict[str, Any]:
    ledger_kind = "sqlite" if settings.database_url is None else "postgresql"
    if settings.database_url is None:
        progress(f"SQLite online backup of {settings.data_dir / LEDGER_FILENAME}")
        await asyncio.to_thread(_sqlite_backup, settings.data_dir / LEDGER_FILENAME, out)
    else:
        progress("pg_dump of Keygen's tables")
        await asyncio.to_thread(_pg_dump, settings.database_url, out / PG_DUMP_FILE)
    leases = await _redis_leases(settings, snapshot=True, progress=progress)
    (out / REDIS_LEASES).write_text(json.dumps(leases, indent=2))
    ledger = await open_ledger(settings, inspect=True)
    try:
        counters = {s.namespace: s.last_id for s in await ledger.status()}
    finally:
        await ledger.aclose()
    manifest = {
        "keygen_version": __version__,
        "created_at": time.time(),
        "ledger": ledger_kind,
        "counters": counters,
        "redis_leases": len(leases),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def _sqlite_backup(source: Path, out: Path) -> None:
    if not source.exists():
        raise BackupError(f"no Keygen ledger at {source}: {_NOTHING_YET}")
    with sqlite3.connect(source) as live, sqlite3.connect(out / LEDGER_FILENAME) as copy:
        live.backup(copy)  # consistent even while the service writes


def _pg_tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    from keygen.cluster.binaries import find_postgres_bin_dir

    bin_dir = find_postgres_bin_dir()
    if bin_dir is None or not (bin_dir / name).exists():
        raise BackupError(f"{name} is not installed (Debian: apt-get install postgresql-client)")
    return str(bin_dir / name)


def _without_password(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without its password (in the userinfo or a ``password=`` parameter), and the
    environment that gives it to libpq instead: a command line is visible to every local
    user, a process's environment is not."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    query = parse_qsl(parts.query, keep_blank_values=True)
    passwords = [value for key, value in query if key == "password"]
    if not colon and not passwords:
        return url, {}
    stripped = parts._replace(
        netloc=f"{user}{at}{host}",
        query=urlencode([(k, v) for k, v in query if k != "password"], safe="/"),
    )
    return urlunsplit(stripped), {"PGPASSWORD": unquote(password) if colon else passwords[-1]}


def _run(argv: list[str], what: str, url: str) -> None:
    """Run the PostgreSQL tool ``argv`` on the database ``url``, its password passed in the
    environment; BackupError with the tool's message, credentials masked, if it fails."""
    dsn, env = _without_password(url)
    result = subprocess.run(
        [argv[0], f"--dbname={dsn}", *argv[1:]],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
    )
    if result.returncode != 0:
        message = redact_text(result.stderr.strip()[-2000:], url, dsn)
        raise BackupError(f"{what} failed: {message}")


def _pg_dump(url: str, path: Path) -> None:
    argv = [_pg_tool("pg_dump"), "--format=custom", f"--table={PG_TABLES}", f"--file={path}"]
    try:
        _run(argv, "pg_dump", url)
    except BackupError as exc:
        if "no matching tables were found" in str(exc):
            raise BackupError(f"no Keygen ledger in the database: {_NOTHING_YET}") from exc
        raise


async def _redis_leases(
    settings: Settings, *, snapshot: bool, progress: Progress
) -> dict[str, dict[str, str]]:
    """Every lease hash in Redis (by namespace); empty without a Redis layer."""
    if not settings.sentinels:
        return {}
    from redis.exceptions import RedisError

    from keygen.dispensers.sentinel import master_of, sentinels_of

    sentinel = sentinels_of(settings)
    master = master_of(settings, sentinel, socket_timeout=REDIS_TOOL_TIMEOUT)
    prefix = REDIS_LEASE_KEY.format("")
    try:
        if snapshot:
            progress("BGSAVE on the Redis master")
            before = await master.lastsave()
            await master.bgsave()
            for _ in range(600):  # the snapshot is Redis's own copy; wait up to a minute
                if await master.lastsave() != before:
                    break
                await asyncio.sleep(0.1)
        leases = {}
        async for key in master.scan_iter(match=f"{prefix}*"):
            fields = await master.hgetall(key)  # str: the client decodes responses
            leases[str(key)[len(prefix) :]] = {str(k): str(v) for k, v in fields.items()}
        return leases
    except RedisError as exc:
        raise BackupError(f"Redis: {exc}") from exc
    finally:
        await master.aclose()
        await sentinel.aclose()


# -- restore -----------------------------------------------------------------------------


async def collect_evidence(
    settings: Settings, operator_floors: dict[str, int], progress: Progress
) -> Evidence:
    """The highest ID each namespace may have issued, from everything reachable now."""
    evidence = Evidence()
    sources = {
        "current ledger": await _ledger_floors(settings, progress),
        "Redis leases": await _redis_floors(settings, progress),
        "reserve journals": journal_floors(settings.data_dir),
        "operator floors": list(operator_floors.items()),
    }
    for name, floors in sources.items():
        if floors:
            evidence.sources.append(f"{name} ({len(floors)})")
        for namespace, last_id in floors:
            evidence.raise_to(namespace, last_id)
    return evidence


async def _ledger_floors(settings: Settings, progress: Progress) -> list[tuple[str, int]]:
    """Every counter of the ledger about to be replaced: it covers every grant ever made."""
    try:
        ledger = await open_ledger(settings, inspect=True)
        try:
            return [(s.namespace, s.last_id) for s in await ledger.status()]
        finally:
            await ledger.aclose()
    except KeygenError as exc:
        progress(f"the current ledger is not readable ({exc}): no evidence from it")
        return []


def journal_floors(data_dir: Path) -> list[tuple[str, int]]:
    """The last ID of every reserve the emergency-reserve journals name, damaged journals and
    the copies set aside included: a reserve's end bounds whatever was served from it."""
    floors = []
    for path in sorted(data_dir.glob(JOURNAL_NAME.format("*") + "*")):
        for reserve in replay(path.read_bytes()).reserves.values():
            floors.append((reserve.namespace, reserve.end))
    return floors


async def _redis_floors(settings: Settings, progress: Progress) -> list[tuple[str, int]]:
    """The last ID of every lease Redis holds."""
    try:
        leases = await _redis_leases(settings, snapshot=False, progress=progress)
    except BackupError as exc:
        progress(f"Redis is not readable ({exc}): no evidence from it")
        return []
    return [
        (namespace, int(lease[LEASE_BASE]) + int(lease[LEASE_LENGTH]) - 1)
        for namespace, lease in leases.items()
        if lease.get(LEASE_BASE) and lease.get(LEASE_LENGTH)
    ]


async def restore(
    settings: Settings,
    source: Path,
    operator_floors: dict[str, int],
    progress: Progress,
    *,
    force: bool = False,
) -> dict[str, tuple[int, int]]:
    """Restore the backup in ``source``, then raise every counter above the evidence.

    ``operator_floors`` maps a namespace (or ``"*"`` for all) to the highest ID that may
    have been issued. Returns, per namespace, (counter as restored, counter after raising).
    Refused while instances run on the ledger (``force`` goes ahead anyway): it is replaced
    under them, and what they grant meanwhile is in no evidence.
    """
    manifest = _read_manifest(source)
    if not force and (live := await live_instances(settings, progress)):
        raise BackupError(
            "refusing to restore while Keygen instances may be running on this ledger: "
            + "; ".join(live)
            + ". Stop every instance first, or give --force if none of these is one."
        )
    evidence = await collect_evidence(
        settings, {k: v for k, v in operator_floors.items() if k != "*"}, progress
    )
    floor_for_all = operator_floors.get("*")
    if not evidence.sources and floor_for_all is None:
        raise BackupError(
            "refusing to restore: nothing shows what was issued after the backup (the current "
            "ledger is unreachable or empty, no Redis leases, no reserve journal). Give the "
            "highest ID that may have been issued with --floor N (or --floor NAMESPACE=N)."
        )
    progress(f"evidence: {', '.join(evidence.sources) or 'operator floor only'}")
    if manifest["ledger"] == "sqlite":
        if settings.database_url is not None:
            raise BackupError("this backup is of a SQLite ledger, but KEYGEN_DATABASE_URL is set")
        await asyncio.to_thread(_sqlite_restore, source, settings.data_dir)
    else:
        if settings.database_url is None:
            raise BackupError("this backup is of PostgreSQL, but KEYGEN_DATABASE_URL is unset")
        progress("pg_restore of Keygen's tables")
        argv = [_pg_tool("pg_restore"), "--clean", "--if-exists", "--single-transaction"]
        argv.append(str(source / PG_DUMP_FILE))
        await asyncio.to_thread(_run, argv, "pg_restore", settings.database_url)
    ledger = await open_ledger(settings)
    try:
        restored = {s.namespace: s.last_id for s in await ledger.status()}
        targets = dict(evidence.floors)
        if floor_for_all is not None:
            for namespace in {*restored, *targets}:
                targets[namespace] = max(targets.get(namespace, 0), floor_for_all)
        changes = {}
        for namespace in sorted({*restored, *targets}):
            after = await ledger.advance_to(namespace, targets.get(namespace, 0))
            changes[namespace] = (restored.get(namespace, 0), after)
        return changes
    finally:
        await ledger.aclose()


def _read_manifest(source: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((source / MANIFEST).read_text()))
    except (OSError, ValueError, TypeError) as exc:  # TypeError: JSON, but not an object
        raise BackupError(f"{source} is not a Keygen backup: {exc}") from exc


def _sqlite_restore(source: Path, data_dir: Path) -> None:
    target = data_dir / LEDGER_FILENAME
    data_dir.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(source / LEDGER_FILENAME) as backup_db, sqlite3.connect(target) as live:
        backup_db.backup(live)  # replaces the live file's content, WAL included
        try:
            row = live.execute("SELECT id FROM ledger_identity LIMIT 1").fetchone()
        except sqlite3.OperationalError:  # a backup from before ledgers had an identity
            row = None
    if row is not None:  # the data dir remembers the restored ledger, no longer the replaced
        remembered = data_dir / IDENTITY_FILENAME
        remembered.with_suffix(".restored").write_text(f"{row[0]}\n")
        remembered.with_suffix(".restored").replace(remembered)


def parse_floors(values: Iterable[str]) -> dict[str, int]:
    """``--floor N`` (every namespace) and ``--floor NAMESPACE=N``."""
    floors: dict[str, int] = {}
    for value in values:
        namespace, _, number = value.rpartition("=")
        if not number.isdigit():
            raise BackupError(f"--floor {value!r}: expected N or NAMESPACE=N")
        floors[namespace or "*"] = int(number)
    return floors
