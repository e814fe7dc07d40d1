"""The ledgers: the durable authority over each namespace's counter.

``open_ledger`` is the one place that turns the settings into a ledger: PostgreSQL with
``KEYGEN_DATABASE_URL``, else the embedded SQLite file in ``KEYGEN_DATA_DIR``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from keygen.config import Settings

if TYPE_CHECKING:
    from keygen.ledgers.base import Ledger

# The backends are imported when a ledger is opened: ``keygen.ledgers.base`` stays light.

__all__ = ["ledger_location", "open_ledger"]


async def open_ledger(settings: Settings, *, inspect: bool = False, tool: bool = False) -> Ledger:
    """The ledger the settings name, ready to use.

    Args:
        inspect: for a tool that only reads (``keygen ledger status``, a backup): the schema
            is not migrated, and PostgreSQL gets one connection, made on first use.
        tool: for a tool that writes (``keygen keys``): the schema is migrated, and no
            background task (audit retention) runs.
    """
    from keygen.ledgers.postgres import PostgresLedger
    from keygen.ledgers.sqlite import SqliteLedger

    # A tool that only reads does not prune the audit trail.
    retention = 0 if inspect or tool else settings.audit_retention_days
    if settings.database_url is None:
        return await SqliteLedger.open(
            settings.data_dir,
            max_namespaces=settings.max_namespaces,
            audit_retention_days=retention,
        )
    if inspect:
        return PostgresLedger(
            settings.database_url,
            pool_min_size=1,
            pool_max_size=1,
            connect_timeout=settings.db_connect_timeout,
            command_timeout=settings.db_command_timeout,
            migrate=False,
        )
    return await PostgresLedger.open(
        settings.database_url,
        pool_min_size=settings.db_pool_min_size,
        pool_max_size=settings.db_pool_max_size,
        connect_timeout=settings.db_connect_timeout,
        command_timeout=settings.db_command_timeout,
        max_namespaces=settings.max_namespaces,
        audit_retention_days=retention,
    )


def ledger_location(settings: Settings) -> str:
    """Where the ledger lives, without credentials: the reserve journal records it, and never
    serves a reserve that another ledger granted."""
    from keygen.ledgers.sqlite import LEDGER_FILENAME

    if settings.database_url is None:
        return f"sqlite:{(settings.data_dir / LEDGER_FILENAME).resolve()}"
    parts = urlsplit(settings.database_url)
    try:
        port = parts.port or 5432
    except ValueError:
        port = 5432
    return f"postgresql://{parts.hostname or ''}:{port}{parts.path or '/'}"
