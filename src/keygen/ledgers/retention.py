"""Audit retention: grant rows older than ``KEYGEN_AUDIT_RETENTION_DAYS`` are pruned in the
background, a small batch at a time, so the trail stops growing with every request.

What is never pruned, whatever its age:

- the **counters**: they are the ledger's authority, and every restore's evidence
  (``backup.py`` reads them, never the grant rows);
- each namespace's **latest grant** (its highest ``end_id``): the trail keeps saying how far
  the namespace was granted, so a check of the trail against the counters
  (``audit.py``) still sees every namespace's high-water mark;
- every **reserve grant**: ``record_reserve_usage`` looks a retired reserve's grant up to tell
  a sound ledger from one restored from an older backup, and a reserve may be retired
  long after it was granted. Reserves are granted once per namespace, process and outage:
  they are few.

Only rows are deleted; nothing is ever granted again because of it (the counters decide).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

from keygen.errors import KeygenError

log = logging.getLogger(__name__)

#: Seconds between two pruning rounds, and before the first one.
PRUNE_INTERVAL: Final = 3600.0
PRUNE_FIRST_DELAY: Final = 30.0
#: Rows looked at per batch (one short transaction), and the pause between batches, so
#: grants never wait long behind pruning.
PRUNE_BATCH: Final = 500
PRUNE_PAUSE: Final = 0.05
SECONDS_PER_DAY: Final = 86_400

#: One batch: ``(before, after, batch)`` -> (rows deleted, id to continue after, or None when
#: no row older than ``before`` is left after ``after``).
PruneBatch = Callable[[float, int, int], Awaitable[tuple[int, int | None]]]


async def prune(prune_batch: PruneBatch, before: float, *, batch: int = PRUNE_BATCH) -> int:
    """Delete, batch by batch, the prunable grant rows granted before ``before`` (epoch
    seconds); return how many were deleted."""
    deleted, after = 0, 0
    while True:
        count, next_after = await prune_batch(before, after, batch)
        deleted += count
        if next_after is None:
            return deleted
        after = next_after
        await asyncio.sleep(PRUNE_PAUSE)


class AuditRetention:
    """The background task of one ledger that prunes its audit trail every hour."""

    def __init__(self, prune_batch: PruneBatch, *, days: int, name: str) -> None:
        if days < 1:
            raise ValueError("days must be at least 1 (0 means: no retention task at all)")
        self.days = days
        self.pruned = 0  # rows deleted since start
        self._prune_batch = prune_batch
        self._name = name
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the task on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def run_once(self, now: float | None = None) -> int:
        """Prune what is older than the retention now; return the rows deleted."""
        before = (time.time() if now is None else now) - self.days * SECONDS_PER_DAY
        deleted = await prune(self._prune_batch, before)
        self.pruned += deleted
        if deleted:
            log.info(
                "%s ledger: pruned %d grant rows older than %d days from the audit trail",
                self._name,
                deleted,
                self.days,
            )
        return deleted

    async def _run(self) -> None:
        await asyncio.sleep(PRUNE_FIRST_DELAY)
        while True:
            try:
                await self.run_once()
            except KeygenError as exc:  # the ledger is down: try again next round
                log.warning("%s ledger: pruning the audit trail failed: %s", self._name, exc)
            except Exception:
                log.exception("%s ledger: pruning the audit trail failed", self._name)
            await asyncio.sleep(PRUNE_INTERVAL)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
