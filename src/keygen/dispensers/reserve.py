"""The emergency reserve: the last layer, serving from leases the ledger granted to this process
alone, journaled to local disk, while Redis and the ledger both cannot serve.

Per namespace, the process holds one reserve of ``KEYGEN_RESERVE_SIZE`` IDs, granted by the
ledger with kind ``reserve`` and recorded in the process's journal (``journal.py``). A
background *keeper* takes the reserves (at start-up for ``KEYGEN_RESERVE_NAMESPACES`` and the
journal's namespaces, then for every namespace served) and, once a reserve has been used and
the ledger answers again, takes a fresh one, retires the used one, and records in the ledger's
audit trail what was used of it. The keeper is the only code that talks to the ledger: a
request never waits for it.

Reserves go to the namespaces served most: at most ``MAX_NAMESPACES`` are held (those of
``KEYGEN_RESERVE_NAMESPACES`` always), and a namespace served more than twice as much as the
least served one holding a reserve (for ``MIN_HOLD`` seconds at least) takes its place: the
evicted reserve is retired as a replaced one is (journaled ``retire``, its usage recorded,
its tail wasted). Allocation rates are tracked for at most ``MAX_TRACKED`` namespaces.

Why this cannot repeat an ID: a reserve is a span the ledger granted once, to this journal
slot, which one process at a time holds (an exclusive lock). Ranges are carved from it by a
cursor moved synchronously on the event loop, and only below the journal's *mark*: the mark is
raised (ahead, by 1/64 of the reserve, so the fsync is paid once per chunk, not per request)
and fsynced before any range above the previous mark is returned. After a crash the process
resumes above the mark, which lies at or above everything handed out. A retired reserve is
never served from again: its unused tail is wasted, counted, never given back. The full
argument is in ``docs/correctness.md``.

A journal that may not be this data dir's latest (cut at a record boundary, restored from
an earlier copy, copied from elsewhere) is caught by ``journal.py`` (owner and witness) and
its reserves abandoned; and whenever the ledger answers, the keeper records each reserve's
mark there, per opening of the journal (``reserve_marks.py``), so that a replay that got
past both is stopped, and shown by ``keygen audit`` (``docs/reserve.md``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Final

from keygen.constants import GRANT_RESERVE, SOURCE_RESERVE
from keygen.dispensers.journal import Journal
from keygen.dispensers.journal_records import Record
from keygen.dispensers.reserve_marks import record_marks
from keygen.dispensers.reserve_state import RATE_WINDOW, HeldReserve, Rate, namespace_snapshot
from keygen.dispensers.segment import what_is_left
from keygen.dispensers.singleflight import SingleFlight
from keygen.errors import KeygenError, NamespaceExhausted, ReserveExhausted, ReserveUnavailable
from keygen.histogram import REFILL_BUCKETS, Histogram
from keygen.ledgers.base import Ledger, ReserveMarks, ReserveUsage
from keygen.ranges import IdRange
from keygen.snapshots import ReserveSnapshot

log = logging.getLogger(__name__)

#: Seconds between the keeper's rounds while all is well; after failures it backs off.
KEEP_INTERVAL: Final = 1.0
MAX_BACKOFF: Final = 2.0
#: A used reserve is replaced once it has served nothing for this long (the outage is over),
#: or at once when half of it is gone and the ledger answers.
QUIET: Final = 1.0
#: ``/health`` says the reserve is serving when it served a request this recently.
SERVING_WINDOW: Final = 5.0
#: Most namespaces a process keeps a reserve for.
MAX_NAMESPACES: Final = 256
#: Most namespaces whose allocation rate is tracked (the candidates for a reserve); the
#: keeper forgets the idlest ones to keep room for newcomers.
MAX_TRACKED: Final = 2 * MAX_NAMESPACES
#: A reserve is held this long at least before a busier namespace may take its place, and at
#: most this many are evicted per keeper round: evictions stay rare (each wastes a tail).
MIN_HOLD: Final = 60.0
MAX_EVICTIONS: Final = 8
#: The keeper gives up on one ledger call after this long (the ledger's own timeouts are
#: shorter; this only bounds a ledger that misbehaves).
LEDGER_CALL_TIMEOUT: Final = 30.0


def _marks_of(ledger: Ledger) -> ReserveMarks | None:
    return ledger if isinstance(ledger, ReserveMarks) else None


class ReserveDispenser:
    """Serves from this process's journaled reserves; a keeper task keeps them filled."""

    source = SOURCE_RESERVE

    def __init__(
        self,
        ledger: Ledger,
        journal: Journal,
        *,
        size: int,
        namespaces: tuple[str, ...],
        holder: str,
        marks: ReserveMarks | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self.holder = holder
        self.journal = journal
        self.ids_served = 0
        self.ids_wasted = journal.abandoned_ids  # never handed out, never to be
        self.reserves_taken = 0
        self.refill_seconds = Histogram(REFILL_BUCKETS)  # how long taking each reserve took
        self.usages_recorded = 0
        self.broken: str | None = None  # why the journal cannot be written, if it cannot
        self.last_error: str | None = None  # the keeper's last failure to reach the ledger
        self.last_error_at: float | None = None
        self._ledger = ledger
        #: Where the reserves' marks are recorded (the ledger, when it keeps them).
        self._marks_book = marks if marks is not None else _marks_of(ledger)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keygen-journal")
        self._current: dict[str, HeldReserve] = {}
        self._pending: list[HeldReserve] = []  # retired, usage not yet in the ledger
        self._wanted: dict[str, None] = dict.fromkeys(namespaces)  # ordered set
        self._pinned = frozenset(namespaces)  # never evicted
        self._rates: dict[str, Rate] = {}
        self._last_served: dict[str, float] = {}
        self._last_served_at: float | None = None  # any namespace
        self._marks = SingleFlight()
        self._wake = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False
        for entry in journal.reserves:
            reserve = HeldReserve(entry.namespace, entry.start, entry.end, entry.mark)
            self._wanted[entry.namespace] = None
            if entry.retired is not None:
                reserve.retired = entry.retired
                self._pending.append(reserve)
                continue
            log.info(
                "reserve journal %s: resuming reserve %d..%d of %r above its mark %d",
                journal.path,
                reserve.start,
                reserve.end,
                reserve.namespace,
                entry.mark,
            )
            self._current[entry.namespace] = reserve

    @classmethod
    async def open(
        cls,
        ledger: Ledger,
        *,
        data_dir: Path,
        slots: int,
        size: int,
        namespaces: tuple[str, ...],
        instance_id: str,
        location: str,
        witness_dir: Path | None = None,
    ) -> ReserveDispenser:
        """Lock a journal slot in ``data_dir``, replay it, and start the keeper.

        Raises:
            JournalLocked: every slot is locked by another process.
            ReserveUnavailable: the data dir or the witness directory cannot be written.
        """
        try:
            journal = await asyncio.to_thread(
                partial(
                    Journal.open,
                    data_dir,
                    slots=slots,
                    location=location,
                    owner=instance_id,
                    witness_dir=witness_dir,
                )
            )
        except OSError as exc:
            # One line naming the setting: the operator's fix is a path, not a traceback.
            where = exc.filename or data_dir
            raise ReserveUnavailable(
                f"the emergency reserve's journal cannot be kept in {where} "
                f"(KEYGEN_DATA_DIR, or KEYGEN_RESERVE_WITNESS_DIR for its witness): "
                f"{exc.strerror or exc}"
            ) from exc
        dispenser = cls(
            ledger,
            journal,
            size=size,
            namespaces=namespaces,
            holder=f"{instance_id}/reserve-{journal.slot}",
        )
        dispenser.start()
        return dispenser

    def start(self) -> None:
        """Start the keeper (on the running event loop)."""
        if self._keeper is None:
            self._keeper = asyncio.get_running_loop().create_task(self._keep())

    # -- serving ---------------------------------------------------------------------------

    async def allocate(self, namespace: str, size: int) -> IdRange:
        while True:
            reserve = self._serving_reserve(namespace, size)
            start = reserve.carve(size, below=reserve.durable)
            if start is not None:
                self._served(reserve, size)
                return IdRange(namespace, start, start + size - 1)
            # Every request that needs the mark raised waits for the same journal write.
            await self._marks.run(
                f"{namespace}:{reserve.start}", partial(self._raise_mark, reserve, size)
            )

    def _serving_reserve(self, namespace: str, size: int) -> HeldReserve:
        if self.broken is not None or self._closed:
            raise ReserveUnavailable(self._broken_message())
        reserve = self._current.get(namespace)
        if reserve is None:
            raise ReserveUnavailable(
                f"no emergency reserve is held for namespace {namespace!r} yet: one is taken "
                "as soon as the ledger answers"
            )
        if reserve.remaining < size:
            raise ReserveExhausted(
                f"the emergency reserve of namespace {namespace!r} is exhausted "
                f"({reserve.remaining} IDs left, {size} asked for); it is refilled as soon as "
                "the ledger answers"
            )
        return reserve

    def _served(self, reserve: HeldReserve, size: int) -> None:
        now = time.monotonic()
        if self._last_served_at is None or now - self._last_served_at > SERVING_WINDOW:
            log.warning(
                "serving from the emergency reserve: Redis and the ledger cannot; "
                "%d IDs left in %r",
                reserve.remaining,
                reserve.namespace,
            )
        self._last_served_at = self._last_served[reserve.namespace] = now
        self.ids_served += size
        if (
            not reserve.prefetching
            and reserve.durable < reserve.end
            and reserve.durable - reserve.next + 1 < reserve.chunk // 2
        ):
            reserve.prefetching = True  # set now: carving never yields, the task starts later
            self._spawn(self._prefetch_mark(reserve))  # the next chunk, before it is needed

    async def _raise_mark(self, reserve: HeldReserve, size: int) -> None:
        """Journal (and fsync) a mark covering the next ``size`` IDs, and a chunk more."""
        target = min(reserve.end, max(reserve.next + size - 1, reserve.durable + reserve.chunk))
        if target <= reserve.durable:
            return
        await self._append([{"type": "mark", **reserve.key(), "mark": target}])
        reserve.durable = max(reserve.durable, target)

    async def _prefetch_mark(self, reserve: HeldReserve) -> None:
        key = f"{reserve.namespace}:{reserve.start}"
        try:
            await self._marks.run(key, partial(self._raise_mark, reserve, 1))
        except KeygenError as exc:  # a request that needs the mark will report it
            log.debug("raising the reserve's mark ahead of need failed: %s", exc)
        finally:
            reserve.prefetching = False

    async def _append(self, records: list[Record]) -> None:
        """Write ``records`` to the journal and wait until they are on disk."""
        if self.broken is not None or self._closed:
            raise ReserveUnavailable(self._broken_message())
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._executor, self.journal.append, records
            )
        except OSError as exc:
            # After a failed write or fsync the file's state is unknown: stop using it. The
            # next start replays whatever reached the disk, and distrusts it if damaged.
            if self.broken is None:
                self.broken = f"{exc.strerror or exc}"
                log.error(
                    "reserve journal %s cannot be written (%s): the emergency reserve "
                    "is not served from until a restart",
                    self.journal.path,
                    self.broken,
                )
            raise ReserveUnavailable(self._broken_message()) from exc

    def _broken_message(self) -> str:
        if self._closed:
            return "the emergency reserve is closed"
        return (
            f"the emergency reserve's journal {self.journal.path} cannot be written ({self.broken})"
        )

    def observe(self, namespace: str, size: int) -> None:
        """Note an allocation served by any layer: its namespace gets a reserve, and its rate
        gives the reserve's minutes left. Called by the allocator on every success."""
        rate = self._rates.get(namespace)
        if rate is None:
            if len(self._rates) >= MAX_TRACKED:
                return  # until the keeper forgets the idlest
            rate = self._rates[namespace] = Rate()
            if namespace not in self._wanted:
                self._wake.set()
        rate.add(size, time.monotonic())

    # -- keeping the reserves filled -------------------------------------------------------

    async def _keep(self) -> None:
        delay = 0.0
        while True:
            if delay:
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            self._wake.clear()
            try:
                await self._keep_once()
            except (KeygenError, TimeoutError) as exc:
                self._note_failure(exc)
                delay = min(MAX_BACKOFF, max(KEEP_INTERVAL / 2, 2 * delay))
                continue
            except Exception as exc:
                log.exception("the emergency reserve's keeper failed")
                self._note_failure(exc)
                delay = MAX_BACKOFF
                continue
            if self.last_error is not None:
                log.info("the emergency reserve's keeper reaches the ledger again")
                self.last_error = self.last_error_at = None
            delay = KEEP_INTERVAL

    def _note_failure(self, exc: BaseException) -> None:
        message = str(exc) or type(exc).__name__
        if self.last_error is None:
            log.warning(
                "the emergency reserve's keeper cannot reach the ledger (%s); retrying", message
            )
        self.last_error, self.last_error_at = message, time.time()

    async def _keep_once(self) -> None:
        """Record retired reserves' usage, then take a reserve wherever one is due."""
        if self.broken is not None:
            return
        await self._record_usages()
        now = time.monotonic()
        await self._rebalance(now)
        for namespace in list(self._wanted):
            reserve = self._current.get(namespace)
            if reserve is None or self._due(reserve, now):
                await self._take(namespace)
        await self._record_usages()
        if self._marks_book is not None:
            for reserve in await record_marks(
                self._marks_book, self._current.values(), self.journal, self.holder
            ):
                await self._retire_replayed(reserve)

    async def _retire_replayed(self, reserve: HeldReserve) -> None:
        """Stop serving a reserve whose IDs another opening of the journal may have handed
        out (a copy, or an earlier state of it, ran): never served from again."""
        await self._append([{"type": "retire", **reserve.key(), "reason": "replayed"}])
        if self._current.get(reserve.namespace) is reserve:
            del self._current[reserve.namespace]
        reserve.retired = "replayed: another opening of the journal recorded a higher mark"
        self._pending.append(reserve)
        self.ids_wasted += reserve.remaining
        self._wake.set()  # a fresh one at once

    async def _rebalance(self, now: float) -> None:
        """Give the reserves to the namespaces served most (see the module docstring)."""
        self._forget_idle_rates(now)
        scores = {namespace: rate.per_minute(now) for namespace, rate in self._rates.items()}
        candidates = sorted(
            (namespace for namespace in scores if namespace not in self._wanted),
            key=scores.__getitem__,
            reverse=True,
        )
        evictions = 0
        for namespace in candidates:
            score = scores[namespace]
            if score <= 0:
                break
            if len(self._wanted) < MAX_NAMESPACES:
                self._wanted[namespace] = None
                continue
            victim = self._least_served(scores, now)
            if victim is None or evictions >= MAX_EVICTIONS or score <= 2 * scores.get(victim, 0.0):
                break
            await self._evict(victim)
            evictions += 1
            self._wanted[namespace] = None

    def _forget_idle_rates(self, now: float) -> None:
        """Forget the rates of namespaces without a reserve that nothing served for a minute,
        then the idlest others, so that newcomers always find room."""
        rates = self._rates
        idle = [
            namespace
            for namespace, rate in rates.items()
            if namespace not in self._wanted
            and (not rate.buckets or rate.buckets[-1][0] <= now - RATE_WINDOW)
        ]
        for namespace in idle:
            del rates[namespace]
        excess = len(rates) - MAX_TRACKED * 3 // 4
        if excess > 0:
            others = sorted(
                (namespace for namespace in rates if namespace not in self._wanted),
                key=lambda namespace: rates[namespace].buckets[-1][0],
            )
            for namespace in others[:excess]:
                del rates[namespace]

    def _least_served(self, scores: dict[str, float], now: float) -> str | None:
        """The namespace holding (or wanting) a reserve that is served least, among those
        that may be evicted: not pinned, held for ``MIN_HOLD`` at least."""
        evictable = []
        for namespace in self._wanted:
            if namespace in self._pinned:
                continue
            reserve = self._current.get(namespace)
            if reserve is not None and now - reserve.held_since < MIN_HOLD:
                continue
            evictable.append(namespace)
        return min(evictable, key=lambda namespace: scores.get(namespace, 0.0), default=None)

    async def _evict(self, namespace: str) -> None:
        """Stop holding a reserve for ``namespace``: its reserve is retired as a replaced one
        is (journaled first, then never served from again; its usage recorded, its tail
        wasted)."""
        reserve = self._current.get(namespace)
        if reserve is not None:
            await self._append([{"type": "retire", **reserve.key(), "reason": "evicted"}])
            if self._current.get(namespace) is reserve:
                del self._current[namespace]
            reserve.retired = "evicted"
            self._pending.append(reserve)
            self.ids_wasted += reserve.remaining
            log.info(
                "evicted emergency reserve %d..%d of %r for a namespace served more "
                "(%d IDs used, %d wasted)",
                reserve.start,
                reserve.end,
                namespace,
                reserve.used_end - reserve.start + 1,
                reserve.remaining,
            )
        self._wanted.pop(namespace, None)
        self._last_served.pop(namespace, None)

    def _due(self, reserve: HeldReserve, now: float) -> bool:
        """A used reserve is replaced once quiet, or when half gone (served while the ledger
        answers: a slow ledger rather than a dead one)."""
        if not reserve.used:
            return False
        quiet = now - self._last_served.get(reserve.namespace, -QUIET) >= QUIET
        return quiet or 2 * reserve.remaining <= reserve.end - reserve.start + 1

    async def _take(self, namespace: str) -> None:
        """Take a fresh reserve from the ledger; the one it replaces is retired."""
        started = time.perf_counter()
        async with asyncio.timeout(LEDGER_CALL_TIMEOUT):
            try:
                granted = await what_is_left(
                    partial(self._ledger.grant, namespace, kind=GRANT_RESERVE, holder=self.holder),
                    namespace,
                    self.size,
                )
            except NamespaceExhausted:
                log.warning("namespace %r is exhausted: no emergency reserve for it", namespace)
                del self._wanted[namespace]
                return
        # Nothing can have served from it yet: no mark to record until this process serves.
        fresh = HeldReserve(
            namespace, granted.start, granted.end, granted.start - 1, recorded=granted.start - 1
        )
        old = self._current.get(namespace)
        records: list[Record] = [
            {
                "type": "reserve",
                **fresh.key(),
                "end": fresh.end,
                "ledger": self.journal.location,
                "at": time.time(),
                "owner": self.journal.data_id,
            }
        ]
        if old is not None:
            records.append({"type": "retire", **old.key(), "reason": "replaced"})
        # Durable before it is served from; if this fails the grant is simply wasted.
        await self._append(records)
        self._current[namespace] = fresh  # only the keeper swaps: `old` is still current
        self.reserves_taken += 1
        self.refill_seconds.observe(time.perf_counter() - started)
        if old is None:
            log.info("took emergency reserve %d..%d of %r", fresh.start, fresh.end, namespace)
            return
        old.retired = "replaced"
        self._pending.append(old)
        self.ids_wasted += old.remaining
        log.info(
            "took emergency reserve %d..%d of %r; retired %d..%d after %d IDs were used "
            "(%d wasted)",
            fresh.start,
            fresh.end,
            namespace,
            old.start,
            old.end,
            old.used_end - old.start + 1,
            old.remaining,
        )

    async def _record_usages(self) -> None:
        """Tell the ledger what became of each retired reserve, then forget it."""
        for reserve in list(self._pending):
            if self._marks_book is not None:
                # What this process may have handed out of it, beside the usage: the audit
                # compares the marks of every opening of the journal.
                await record_marks(self._marks_book, [reserve], self.journal, self.holder)
            usage = ReserveUsage(
                reserve.namespace,
                reserve.start,
                reserve.end,
                reserve.used_end,
                self.holder,
                reserve.retired or "",
            )
            async with asyncio.timeout(LEDGER_CALL_TIMEOUT):
                granted = await self._ledger.record_reserve_usage(usage)
            if not granted:
                log.warning(
                    "emergency reserve %d..%d of %r is not in the ledger's audit trail (was the "
                    "ledger restored from an older backup?): its counter was raised above it",
                    reserve.start,
                    reserve.end,
                    reserve.namespace,
                )
            await self._append([{"type": "synced", **reserve.key(), "used_end": reserve.used_end}])
            self._pending.remove(reserve)
            self.usages_recorded += 1
            log.info(
                "recorded in the ledger: emergency reserve %d..%d of %r, %d IDs used, "
                "%d wasted (%s)",
                reserve.start,
                reserve.end,
                reserve.namespace,
                usage.ids_used,
                usage.ids_wasted,
                usage.note,
            )

    # -- reporting -------------------------------------------------------------------------

    @property
    def refills(self) -> int:
        return self.reserves_taken

    @property
    def serving(self) -> bool:
        """Whether the reserve served a request in the last few seconds."""
        last = self._last_served_at
        return last is not None and time.monotonic() - last < SERVING_WINDOW

    async def ping(self) -> None:
        if self.broken is not None or self._closed:
            raise ReserveUnavailable(self._broken_message())
        if not self._current:
            if self.journal.distrusted is not None:
                raise ReserveUnavailable(
                    "no emergency reserve is held yet: the journal's were abandoned (it is not "
                    f"verified: {self.journal.distrusted})"
                )
            raise ReserveUnavailable("no emergency reserve is held yet")
        if not any(reserve.remaining for reserve in self._current.values()):
            raise ReserveExhausted("every emergency reserve is exhausted")

    def snapshot(self) -> ReserveSnapshot:
        """The reserve's state, for ``/health`` and ``/metrics``."""
        now = time.monotonic()
        namespaces = {}
        for namespace in sorted({*self._wanted, *self._current}):
            rate = self._rates.get(namespace)
            per_minute = rate.per_minute(now) if rate is not None else 0.0
            namespaces[namespace] = namespace_snapshot(self._current.get(namespace), per_minute)
        return ReserveSnapshot(
            serving=self.serving,
            size=self.size,
            journal=str(self.journal.path),
            journal_error=self.broken,
            holder=self.holder,
            ids_served=self.ids_served,
            ids_wasted=self.ids_wasted,
            reserves_taken=self.reserves_taken,
            usages_recorded=self.usages_recorded,
            pending_usage_records=len(self._pending),
            last_error=self.last_error,
            last_error_at=self.last_error_at,
            namespaces=namespaces,
        )

    def remaining(self, namespace: str) -> int:
        """IDs left in the reserve of ``namespace`` (0 when none is held)."""
        reserve = self._current.get(namespace)
        return 0 if reserve is None else reserve.remaining

    # -- life cycle ------------------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def wake(self) -> None:
        """Run the keeper now rather than at its next round."""
        self._wake.set()

    async def aclose(self) -> None:
        """Stop the keeper, let journal writes in flight finish, and release the slot."""
        if self._closed:
            return
        self._closed = True
        tasks = [task for task in (self._keeper, *self._background) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.journal.close)  # after queued writes
        self._executor.shutdown(wait=False)
