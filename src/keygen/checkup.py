"""``keygen config check``: the settings validated, and every configured layer asked.

Each check is one real operation of its part, as the service would do it: the data dir is
written to, each reserve journal read back and its lock tried, the ledger asked for its
namespaces (and PostgreSQL for its schema version), every Sentinel for the master and its
quorum, and the master for its role and for the function library.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from keygen.config import Settings
from keygen.errors import KeygenError

__all__ = ["Check", "checkup"]

TIMEOUT = 5.0


@dataclass(frozen=True)
class Check:
    part: str
    ok: bool
    detail: str


async def checkup(settings: Settings) -> list[Check]:
    """Every check, in order; none raises."""
    checks = [_data_dir(settings)]
    if settings.reserve_enabled:
        checks += _journals(settings)
    checks.append(await _guarded("ledger", lambda: _ledger(settings)))
    if settings.sentinels:
        checks += await _redis(settings)
    return checks


async def _guarded(part: str, check: Callable[[], Awaitable[Check]]) -> Check:
    try:
        async with asyncio.timeout(TIMEOUT):
            return await check()
    except TimeoutError:
        return Check(part, False, f"no answer in {TIMEOUT:g} s")
    except (KeygenError, OSError) as exc:
        return Check(part, False, str(exc))


def _data_dir(settings: Settings) -> Check:
    where = settings.data_dir.resolve()
    try:
        where.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=where, prefix=".keygen-check-"):
            pass
    except OSError as exc:
        return Check("data dir", False, f"{where}: not writable: {exc.strerror or exc}")
    return Check("data dir", True, f"{where}: writable")


def _journals(settings: Settings) -> list[Check]:
    from keygen.dispensers.journal import JOURNAL_NAME, replay

    paths = sorted(settings.data_dir.glob(JOURNAL_NAME.format("*")))
    if not paths:
        return [Check("reserve journals", True, "none yet: the first start writes one")]
    checks = []
    for path in paths:
        try:
            damage = replay(path.read_bytes()).damage
            locked = _locked(path)
        except OSError as exc:
            checks.append(Check(f"journal {path.name}", False, f"unreadable: {exc}"))
            continue
        state = "in use by a running process" if locked else "free"
        checks.append(Check(f"journal {path.name}", damage is None, damage or state))
    free = sum(1 for c in checks if c.detail == "free")
    spare = settings.reserve_slots - len(paths) + free
    checks.append(
        Check("reserve slots", spare > 0, f"{spare} of {settings.reserve_slots} free for a start")
    )
    return checks


def _locked(path: os.PathLike[str]) -> bool:
    with open(path, "rb") as journal:
        try:
            fcntl.flock(journal, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(journal, fcntl.LOCK_UN)
        return False


async def _ledger(settings: Settings) -> Check:
    from keygen.ledgers import open_ledger
    from keygen.ledgers.postgres import PostgresLedger
    from keygen.ledgers.postgres_migrations import LATEST_VERSION

    ledger = await open_ledger(settings, inspect=True)
    try:
        await ledger.ping()
        statuses = await ledger.status()
        detail = f"{ledger.name}: answers; {len(statuses)} namespaces"
        if isinstance(ledger, PostgresLedger):
            version = await ledger.current_schema_version()
            if version is None or version < LATEST_VERSION:
                detail += f"; schema at {version}, migrated to {LATEST_VERSION} at next start"
            elif version > LATEST_VERSION:
                msg = f"schema at {version}, newer than this Keygen ({LATEST_VERSION}): upgrade"
                return Check("ledger", False, f"{ledger.name}: {msg}")
            else:
                detail += f"; schema at version {version}"
        return Check("ledger", True, detail)
    finally:
        await ledger.aclose()


async def _redis(settings: Settings) -> list[Check]:
    from redis.exceptions import RedisError

    from keygen.dispensers import redis_functions as fn
    from keygen.dispensers.sentinel import master_of, sentinels_of

    checks = []
    sentinel = sentinels_of(settings)
    name = settings.redis_sentinel_master_name
    for node, (host, port) in zip(sentinel.sentinels, settings.sentinels, strict=True):
        part = f"sentinel {host}:{port}"
        try:
            async with asyncio.timeout(TIMEOUT):
                master = await node.execute_command(  # type: ignore[no-untyped-call]
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", name
                )
                quorum = await node.execute_command(  # type: ignore[no-untyped-call]
                    "SENTINEL", "CKQUORUM", name
                )
        except (RedisError, OSError, TimeoutError) as exc:
            checks.append(Check(part, False, str(exc) or "no answer"))
            continue
        where = ":".join(_text(x) for x in master) if master else "no master"
        checks.append(Check(part, True, f"master {name} at {where}; {_text(quorum)}"))
    client = master_of(settings, sentinel)
    try:
        async with asyncio.timeout(TIMEOUT):
            role = await client.execute_command("ROLE")  # type: ignore[no-untyped-call]
            libraries = await client.function_list(library=fn.LIBRARY_NAME)
    except (RedisError, OSError, TimeoutError) as exc:
        checks.append(Check("redis master", False, str(exc) or "no answer"))
    else:
        loaded = "loaded" if libraries else "not loaded yet (the service loads it)"
        checks.append(
            Check(
                "redis master",
                _text(role[0]) == "master",
                f"role {_text(role[0])}; function library {fn.LIBRARY_NAME} {loaded}",
            )
        )
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()
        with contextlib.suppress(Exception):
            await sentinel.aclose()
    return checks


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
