"""What shows a Keygen instance running on a ledger, for the tools that must not run under
one (``keygen restore``): the files a running instance keeps locked in its data dir, and,
with PostgreSQL, the other sessions on the ledger's database."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from keygen.config import Settings
from keygen.dispensers.journal import JOURNAL_NAME
from keygen.history import HISTORY_LOCK
from keygen.progress import Progress

__all__ = ["live_instances"]


async def live_instances(settings: Settings, progress: Progress) -> list[str]:
    """What shows an instance running on the ledger of ``settings``: the data dir's files a
    running instance keeps locked, and, with PostgreSQL, the other sessions on its database
    (an instance keeps ``KEYGEN_DB_POOL_MIN_SIZE`` connections open)."""
    found = _locked_files(settings.data_dir)
    if settings.database_url is not None:
        found += await _postgres_sessions(settings, progress)
    return found


def _locked_files(data_dir: Path) -> list[str]:
    held = []
    for path in [data_dir / HISTORY_LOCK, *sorted(data_dir.glob(JOURNAL_NAME.format("*")))]:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # not there: nobody holds it
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            held.append(f"{path} is locked by a running process")
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    return held


async def _postgres_sessions(settings: Settings, progress: Progress) -> list[str]:
    import asyncpg

    assert settings.database_url is not None
    try:
        conn = await asyncpg.connect(settings.database_url, timeout=settings.db_connect_timeout)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # The restore cannot go far without it either: pg_restore says why.
        progress(f"PostgreSQL's sessions could not be listed ({type(exc).__name__})")
        return []
    try:
        rows = await conn.fetch(_OTHER_SESSIONS)
    finally:
        await conn.close()
    return [
        f"PostgreSQL session {r['pid']} of {r['usename']} from {r['client'] or 'a local socket'}"
        + (f" ({r['application_name']})" if r["application_name"] else "")
        for r in rows
    ]


#: The other client sessions on the ledger's database; another role's client address may be
#: hidden (NULL) from a role without pg_read_all_stats, its pid and name are not.
_OTHER_SESSIONS = """
SELECT pid, usename, host(client_addr) AS client, application_name FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND backend_type = 'client backend' ORDER BY pid
"""
