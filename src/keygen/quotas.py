"""Rate limits and quotas per API key and per namespace, and the usage of each key.

A key may have limits on requests per second, IDs per second and IDs per UTC day (``keygen
keys create``); ``KEYGEN_NAMESPACE_LIMITS`` gives namespaces theirs (``keygen/rates.py``).
A request over any of them gets a 429 with ``Retry-After`` and the RateLimit headers, and
allocates nothing. The per-second limits are sliding windows (the previous second's count,
weighted by how much of it still lies within the last second, plus this second's), so a
burst across a second's boundary is not let through twice; the day is a fixed UTC day.

Why counters of our own, not a rate-limit library's per-hit storage: each request is
checked in memory, in well under a microsecond per limit, and the counts are exchanged
through Redis in the background, every ``KEYGEN_RATE_LIMIT_SYNC_INTERVAL`` (0.1 s), in one
pipelined round trip for every counter in use. A library hit costs 4 to 8 µs per limit in
memory and a Redis round trip per request with Redis storage (``benchmarks/auth.py``),
against a budget of 10 µs for the keys and the limits together.

Sharing: with Sentinels configured, every instance adds its counts to Redis keys
``keygen:rate:<subject>:<limit>:<window>`` (INCRBY, EXPIRE) and reads the totals back, so a
limit holds for all instances together, give or take what the others let through within
one exchange interval. Without Redis, or while Redis cannot be reached, each process counts
on its own (with ``--workers N``, a limit then holds per worker): that is logged when it
starts and ends, and shown in ``/health`` (``rate_limits.mode``). Allocation never waits for
the exchange: a Redis outage changes how precisely limits are shared, never whether IDs are
served.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final, NoReturn

from keygen.errors import KeygenError, RateLimited
from keygen.ledgers.base import Ledger
from keygen.rates import NamespaceRule, Rates
from keygen.snapshots import RateLimitSnapshot

__all__ = ["Quotas", "UsageMeter"]

log = logging.getLogger(__name__)

SECOND: Final = 1.0
DAY: Final = 86_400.0
#: Each limit: its window, whether it slides, and whether it counts requests or IDs.
LIMITS: Final = {
    "requests_per_second": (SECOND, True, False),
    "ids_per_second": (SECOND, True, True),
    "ids_per_day": (DAY, False, True),
}
REDIS_PREFIX: Final = "keygen:rate"
#: Namespaces whose counters (or lack of them) are remembered; past it, idle ones are dropped.
MAX_TRACKED_NAMESPACES: Final = 20_000
#: How often the usage per key is added to the ledger.
USAGE_FLUSH_INTERVAL: Final = 5.0


class Counter:
    """One limit of one subject: its counts in the current and the previous window.

    ``own`` counts what this process let through and has not sent to Redis yet, ``inflight``
    what it has sent and not yet heard back about, ``shared`` the total of every instance
    as Redis last answered (this process's sent counts included).
    """

    __slots__ = (
        "counts_ids",
        "ends",
        "inflight",
        "limit",
        "name",
        "own",
        "period",
        "previous",
        "shared",
        "sliding",
        "stale",
        "starts",
        "subject",
        "window",
    )

    def __init__(self, subject: str, name: str, limit: int) -> None:
        self.subject, self.name, self.limit = subject, name, limit
        self.period, self.sliding, self.counts_ids = LIMITS[name]
        self.window = 0
        #: When the current window starts and ends: a request compares its time with them,
        #: no more (a clock set back moves the window back too, as it always did).
        self.starts, self.ends = 0.0, self.period
        self.own = self.inflight = self.shared = 0
        self.previous = 0.0
        #: (window, count) not yet sent from windows that have ended.
        self.stale: list[tuple[int, int]] = []

    def redis_key(self, window: int) -> str:
        return f"{REDIS_PREFIX}:{self.subject}:{self.name}:{window}"

    def used(self, now: float) -> float:
        """What counts against the limit at ``now`` (the previous window's count weighted by
        how much of it still lies within the last period)."""
        if not self.starts <= now < self.ends:
            self.roll(int(now // self.period))
        current = self.shared + self.inflight + self.own
        if not self.sliding:
            return current
        return self.previous * (self.ends - now) / self.period + current

    def roll(self, window: int) -> None:
        """Move on to ``window``: the current one's count becomes the previous one's."""
        if self.own:
            self.stale.append((self.window, self.own))
        total = self.shared + self.inflight + self.own
        self.previous = float(total) if window == self.window + 1 else 0.0
        self.window, self.own, self.inflight, self.shared = window, 0, 0, 0
        self.starts, self.ends = window * self.period, (window + 1) * self.period

    def reset_in(self, now: float) -> int:
        """Whole seconds until this window ends (at least 1)."""
        return max(1, math.ceil((self.window + 1) * self.period - now))


def _counters(subject: str, rates: Rates) -> tuple[Counter, ...]:
    return tuple(Counter(subject, name, limit) for name, limit in rates.items())


class Quotas:
    """The counters of this worker, checked on every request that has limits.

    Args:
        rules: ``KEYGEN_NAMESPACE_LIMITS``.
        redis: the Redis master's client to share counts through (None: per process).
    """

    def __init__(
        self,
        rules: Iterable[NamespaceRule] = (),
        *,
        redis: Any | None = None,
        sync_interval: float = 0.1,
        timeout: float = 0.5,
    ) -> None:
        self.rules = tuple(rules)
        #: Whether some namespace has limits: read on every request.
        self.namespaced = bool(self.rules)
        self.redis = redis
        self.sync_interval = sync_interval
        self.timeout = timeout
        self._keys: dict[str, tuple[Rates, tuple[Counter, ...]]] = {}
        self._namespaces: dict[str, tuple[Counter, ...]] = {}
        self.refused = 0
        self.shared = False  # the last exchange with Redis worked
        self.reason: str | None = (
            "no Redis configured" if redis is None else "no counts exchanged with Redis yet"
        )
        self.last_sync: float | None = None
        self._task: asyncio.Task[None] | None = None

    # -- the check of a request -------------------------------------------------------------

    def admit(self, key_id: str, key_rates: Rates | None, namespace: str, size: int) -> None:
        """Count a request of ``size`` IDs by key ``key_id`` (its limits ``key_rates``; None:
        no key or none) in ``namespace``, or refuse it.

        Raises:
            RateLimited: a limit of the key or the namespace would be passed; nothing is
                counted then.
        """
        counters: tuple[Counter, ...] = ()
        if key_rates is not None:
            entry = self._keys.get(key_id)
            # Identity first: the same Rates object until the key table is read anew.
            if entry is None or (entry[0] is not key_rates and entry[0] != key_rates):
                entry = self._keys[key_id] = (key_rates, _counters(f"key:{key_id}", key_rates))
            counters = entry[1]
        if self.namespaced:
            found = self._namespaces.get(namespace)
            if found is None:
                if len(self._namespaces) >= MAX_TRACKED_NAMESPACES:
                    self._forget_least_recent_namespaces()
                found = self._namespaces[namespace] = self._namespace_counters(namespace)
            counters += found
        if not counters:
            return
        now = time.time()
        # Counter.used() inlined, and each counted as it is checked (the ones before a
        # refusal are taken back): this loop runs on every limited request.
        for counter in counters:
            if not counter.starts <= now < counter.ends:
                counter.roll(int(now // counter.period))
            used: float = counter.shared + counter.inflight + counter.own
            if counter.sliding:
                used += counter.previous * (counter.ends - now) / counter.period
            cost = size if counter.counts_ids else 1
            if used + cost > counter.limit:
                self._refuse(counters, counter, size, used, now)
            counter.own += cost

    def _refuse(
        self, counters: tuple[Counter, ...], refusing: Counter, size: int, used: float, now: float
    ) -> NoReturn:
        """Take back what the counters before ``refusing`` counted of this request, and
        refuse it."""
        for counted in counters:
            if counted is refusing:
                break
            counted.own -= size if counted.counts_ids else 1
        self.refused += 1
        raise self._refusal(refusing, size if refusing.counts_ids else 1, used, now)

    def _forget_least_recent_namespaces(self) -> None:
        """Bound what namespaces cost in memory (a client may name new ones without end, to
        be refused later): keep the half counted most recently; the rest start afresh if
        they come back (so a namespace idle while thousands of others are named may get
        one window's limit again)."""

        def last_counted(entry: tuple[str, tuple[Counter, ...]]) -> float:
            return max((c.window * c.period for c in entry[1]), default=-1.0)

        kept = sorted(self._namespaces.items(), key=last_counted)[-MAX_TRACKED_NAMESPACES // 2 :]
        self._namespaces = dict(kept)

    def _namespace_counters(self, namespace: str) -> tuple[Counter, ...]:
        for rule in self.rules:
            if rule.matches(namespace):
                return _counters(f"namespace:{namespace}", rule.rates)
        return ()

    @staticmethod
    def _refusal(counter: Counter, cost: int, used: float, now: float) -> RateLimited:
        whose = (
            f"API key {counter.subject.removeprefix('key:')}"
            if counter.subject.startswith("key:")
            else f"namespace {counter.subject.removeprefix('namespace:')!r}"
        )
        remaining = max(0, math.floor(counter.limit - used))
        if cost > counter.limit:
            message = (
                f"a request of {cost} IDs is more than the {counter.name} limit of {whose}, "
                f"{counter.limit}: ask for at most {counter.limit} at a time"
            )
        else:
            message = f"over the {counter.name} limit of {whose} ({counter.limit})"
        return RateLimited(
            message,
            policy=counter.name,
            limit=counter.limit,
            remaining=remaining,
            reset=counter.reset_in(now),
            window=int(counter.period),
        )

    # -- sharing through Redis ----------------------------------------------------------------

    def _in_use(self, now: float) -> list[Counter]:
        counters = [c for _, cs in self._keys.values() for c in cs]
        counters.extend(c for cs in self._namespaces.values() for c in cs)
        return [c for c in counters if c.stale or int(now // c.period) - c.window <= 1]

    async def sync(self) -> bool:
        """Send this worker's counts to Redis and take back the totals, in one round trip;
        False when there was nothing to exchange (no counter in use).

        Raises:
            Exception: Redis could not be reached or answered an error (the counts sent stay
                this worker's, to be sent again).
        """
        assert self.redis is not None
        now = time.time()
        sent: list[tuple[Counter, int, int]] = []  # (counter, window, count)
        for counter in self._in_use(now):
            counter.used(now)  # roll to the current window
            for window, count in counter.stale:
                sent.append((counter, window, count))
            counter.stale = []
            counter.inflight, counter.own = counter.inflight + counter.own, 0
            sent.append((counter, counter.window, counter.inflight))
        if not sent:
            return False
        pipe = self.redis.pipeline(transaction=False)
        for counter, window, count in sent:
            pipe.incrby(counter.redis_key(window), count)
            pipe.expire(counter.redis_key(window), int(2 * counter.period) + 60)
        try:
            async with asyncio.timeout(self.timeout):
                replies = await pipe.execute()
        except BaseException:
            for counter, window, count in sent:  # sent again next time
                if window == counter.window:
                    counter.own += count
                    counter.inflight = max(0, counter.inflight - count)
                elif count:
                    counter.stale.append((window, count))
            raise
        for (counter, window, _), total in zip(sent, replies[::2], strict=True):
            if window == counter.window:
                counter.shared, counter.inflight = int(total), 0
            elif window == counter.window - 1 and counter.sliding:
                counter.previous = max(counter.previous, float(total))
        return True

    def start(self) -> None:
        if self.redis is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.sync_interval)
            try:
                exchanged = await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                cause = type(exc).__name__ if isinstance(exc, TimeoutError) else str(exc)
                if not failing:
                    log.warning(
                        "rate limits: cannot share counts through Redis (%s); each process "
                        "counts on its own until it can",
                        cause,
                    )
                failing, self.shared = True, False
                self.reason = f"Redis unreachable: {cause}"[:200]
                continue
            if not exchanged:
                continue  # nothing counted yet: the mode stays what it was
            if not self.shared:
                log.info("rate limits: counts are shared through Redis")
            failing, self.shared, self.reason, self.last_sync = False, True, None, time.time()

    def snapshot(self) -> RateLimitSnapshot:
        limited = sum(1 for rates, _ in self._keys.values() if rates)
        return RateLimitSnapshot(
            mode="shared" if self.shared else "per_process",
            reason=self.reason,
            namespace_rules=len(self.rules),
            keys_limited=limited,
            refused=self.refused,
        )

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.redis is not None:
            await self.redis.aclose()


def utc_day(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")


class UsageMeter:
    """What each API key allocated, added to the ledger's usage table every few seconds
    (``keygen ledger status --keys``); kept and added later while the ledger is down."""

    def __init__(self, ledger: Ledger, *, interval: float = USAGE_FLUSH_INTERVAL) -> None:
        self.ledger = ledger
        self.interval = interval
        self._day = utc_day(time.time())
        self._counts: dict[str, list[int]] = {}  # key id: [requests, ids]
        self._unsent: dict[str, dict[str, tuple[int, int]]] = {}  # day: usage not yet added
        self._task: asyncio.Task[None] | None = None

    def record(self, key_id: str, size: int) -> None:
        counts = self._counts.get(key_id)
        if counts is None:
            self._counts[key_id] = [1, size]
        else:
            counts[0] += 1
            counts[1] += size

    def _take(self) -> None:
        """Move the counts into the unsent usage of their day."""
        if self._counts:
            day = self._unsent.setdefault(self._day, {})
            for key_id, (requests, ids) in self._counts.items():
                before = day.get(key_id, (0, 0))
                day[key_id] = (before[0] + requests, before[1] + ids)
            self._counts = {}
        self._day = utc_day(time.time())

    async def flush(self) -> None:
        """Add the usage counted so far to the ledger.

        Raises:
            KeygenError: the ledger could not take it (it stays, to be added again).
        """
        self._take()
        for day in sorted(self._unsent):
            await self.ledger.add_key_usage(day, self._unsent[day])
            del self._unsent[day]

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except KeygenError as exc:
                log.warning("usage per key: cannot add it to the ledger yet (%s)", exc)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        try:
            await self.flush()
        except KeygenError as exc:
            log.warning("usage per key: the last counts could not be added (%s)", exc)
