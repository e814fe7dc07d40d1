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
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from keygen.config import Settings
from keygen.errors import KeygenError
from keygen.health import concise

__all__ = ["Check", "checkup"]

TIMEOUT = 5.0


@dataclass(frozen=True)
class Check:
    part: str
    ok: bool
    detail: str
    warning: bool = False  # passes, but weaker than it should be (the exit status is kept)


async def checkup(settings: Settings) -> list[Check]:
    """Every check, in order; none raises."""
    checks = [_data_dir(settings)]
    if settings.reserve_enabled:
        checks += _journals(settings)
    if settings.database_url is not None and (tls := _postgres_tls(settings.database_url)):
        checks.append(tls)
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
    from keygen.dispensers.journal import JOURNAL_NAME
    from keygen.dispensers.journal_records import replay

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


#: The sslmodes that encrypt, if at all, without checking whose certificate the server shows:
#: anyone on the path can pose as PostgreSQL and read the ledger's password.
_UNVERIFIED_SSLMODES = ("allow", "prefer", "require")


def _postgres_tls(url: str) -> Check | None:
    """A warning when ``sslmode`` (in the URL, else ``PGSSLMODE``, as asyncpg reads them)
    leaves the PostgreSQL server's certificate unchecked."""
    query = parse_qs(urlsplit(url).query)
    sslmode = (query.get("sslmode") or [os.environ.get("PGSSLMODE", "")])[-1]
    if sslmode not in _UNVERIFIED_SSLMODES:
        return None
    where = "KEYGEN_DATABASE_URL" if "sslmode" in query else "PGSSLMODE"
    return Check(
        "ledger tls",
        True,
        f"{where}: sslmode={sslmode} does not verify the PostgreSQL server's certificate; use "
        "sslmode=verify-full with sslrootcert=/path/ca.crt (the CA that signed it)",
        warning=True,
    )


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
    from redis.asyncio.sentinel import MasterNotFoundError
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
            checks.append(Check(part, False, f"REDIS_SENTINEL_HOSTS {host}:{port}: {_cause(exc)}"))
            continue
        where = ":".join(_text(x) for x in master) if master else "no master"
        checks.append(Check(part, True, f"master {name} at {where}; {_text(quorum)}"))
    client = master_of(settings, sentinel)
    try:
        async with asyncio.timeout(TIMEOUT):
            role = await client.execute_command("ROLE")  # type: ignore[no-untyped-call]
            libraries = await client.function_list(library=fn.LIBRARY_NAME)
    except MasterNotFoundError:
        # redis-py's message holds the repr of every Sentinel's client, paths and all.
        detail = f"REDIS_SENTINEL_MASTER_NAME {name!r}: no Sentinel names a master it holds up"
        checks.append(Check("redis master", False, detail))
    except (RedisError, OSError, TimeoutError) as exc:
        checks.append(Check("redis master", False, f"master {name!r}: {_cause(exc)}"))
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


def _cause(exc: BaseException) -> str:
    """What went wrong, in a few words: the system's reason for a failed connection (redis-py
    words it with the address, which the row names already), else the layer's error as
    /health words it (the TLS library's reason, no object reprs)."""
    if isinstance(exc, TimeoutError):
        return f"no answer in {TIMEOUT:g} s"
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, ssl.SSLError):
        if isinstance(seen, OSError) and seen.errno:
            return os.strerror(seen.errno)
        seen = seen.__cause__ or seen.__context__
    return concise(exc)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
