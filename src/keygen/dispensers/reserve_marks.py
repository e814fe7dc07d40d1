"""The reserves' marks recorded in the ledger, per opening of the journal (a *session*).

The journal is the mark's authority while every layer is down; the ledger is its witness
whenever it answers. Each session records, for each reserve it holds, the IDs it may have
handed out (``first..mark``, ``first`` being where it resumed). Two consequences:

- a session that finds another session's mark at or above its own ``first`` is serving IDs
  that another copy of the journal (a copy of the data dir, or an earlier state of it) may
  have handed out: it stops serving that reserve at once (``ReserveDispenser``);
- two sessions' spans of one reserve that overlap are IDs handed out twice: ``keygen audit``
  reports them (``reserve_replayed``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from keygen.dispensers.journal import Journal
from keygen.dispensers.reserve_state import HeldReserve
from keygen.ledgers.base import ReserveMark, ReserveMarks

__all__ = ["record_marks"]

log = logging.getLogger(__name__)


async def record_marks(
    book: ReserveMarks, reserves: Iterable[HeldReserve], journal: Journal, holder: str
) -> list[HeldReserve]:
    """Record the journaled mark of each of ``reserves`` that changed since it was last
    recorded; return those another session marked at or above this one's first ID.

    Raises:
        LedgerUnavailable: the ledger cannot be reached (the next round tries again).
    """
    replayed = []
    for reserve in list(reserves):
        mark = reserve.durable
        if reserve.recorded == mark:
            continue
        other = await book.record_reserve_mark(
            ReserveMark(
                reserve.namespace,
                reserve.start,
                reserve.end,
                journal.session,
                journal.data_id,
                holder,
                reserve.first,
                mark,
            )
        )
        reserve.recorded = mark
        if other >= reserve.first and reserve.retired is None:
            log.error(
                "emergency reserve %d..%d of %r: another opening of journal %s (a copy of the "
                "data dir, or an earlier state of it) recorded mark %d in the ledger, at or "
                "above %d where this one resumed: the journal was replayed; the reserve is "
                "retired, never served from again",
                reserve.start,
                reserve.end,
                reserve.namespace,
                journal.path,
                other,
                reserve.first,
            )
            replayed.append(reserve)
    return replayed
