"""Online verification: the ledger's audit trail checked for what must never be in it.

Every grant of every kind (leases of the in-process and Redis layers, direct grants, emergency
reserves) is a span the ledger handed out once. So in a sound ledger no two grants of a
namespace share an ID, no grant ends above its namespace's counter, and no counter ever goes
back. ``keygen audit`` checks the whole trail; each running instance checks its own new grants
the same way in the background (``Auditor``) and counts what it finds in
``keygen_audit_violations_total``, behind an alert that must never fire.

The emergency reserves' marks are checked too: each opening of a reserve journal records in
the ledger the IDs of a reserve it may have handed out (``dispensers/reserve_marks.py``), so
two openings whose spans of one reserve overlap (a journal copied, or restored to an earlier
state, and served from) are IDs handed out twice: ``reserve_replayed``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from keygen.checker import Record, find_overlaps
from keygen.ledgers.base import Grant, Ledger, ReserveMark, ReserveMarks

__all__ = ["AuditVerdict", "Auditor", "Violation", "audit_ledger"]

log = logging.getLogger(__name__)

PAGE = 10_000
#: Own grants an instance checks per round at most (oldest first: a backlog is caught up).
ROUND = 200


@dataclass(frozen=True)
class Violation:
    kind: str  # "overlap", "above_counter", "counter_regressed", "reserve_replayed"
    namespace: str
    detail: str


@dataclass
class AuditVerdict:
    grants: int = 0
    namespaces: int = 0
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        verdict = "OK" if self.ok else "VIOLATION"
        return (
            f"{verdict}: {self.grants} grants in {self.namespaces} namespaces, "
            f"{len(self.violations)} violations"
        )


def _describe(grant: Grant) -> str:
    return f"grant #{grant.id} {grant.start}..{grant.end} ({grant.kind}, {grant.holder})"


async def audit_ledger(
    ledger: Ledger, progress: Callable[[str], None] | None = None
) -> AuditVerdict:
    """Check every grant of the audit trail against every other and against the counters.

    The counters are read after the grants: a grant commits with its counter, so on a live
    ledger every grant read is below the counter read after it (read the other way round, a
    grant made in between would look like one above its counter)."""
    verdict = AuditVerdict()
    records: list[Record] = []
    by_range: dict[tuple[str, int, int], Grant] = {}
    highest: dict[str, Grant] = {}
    after = 0
    while page := await ledger.grants(after=after, limit=PAGE):
        for grant in page:
            size = grant.end - grant.start + 1
            records.append(Record(grant.namespace, grant.start, grant.end, size))
            by_range.setdefault((grant.namespace, grant.start, grant.end), grant)
            if grant.namespace not in highest or grant.end > highest[grant.namespace].end:
                highest[grant.namespace] = grant
        after = page[-1].id
        verdict.grants += len(page)
        if progress is not None:
            progress(f"{verdict.grants} grants read")
    counters = {s.namespace: s.last_id for s in await ledger.status()}
    verdict.namespaces = len(counters)
    overlaps, _ = find_overlaps(records)
    for first, second in overlaps:
        a = by_range[(first.namespace, first.start, first.end)]
        b = by_range[(second.namespace, second.start, second.end)]
        verdict.violations.append(
            Violation("overlap", first.namespace, f"{_describe(a)} and {_describe(b)}")
        )
    for namespace, grant in sorted(highest.items()):
        counter = counters.get(namespace)
        if counter is None or grant.end > counter:
            verdict.violations.append(
                Violation("above_counter", namespace, f"{_describe(grant)}; counter {counter}")
            )
    if isinstance(ledger, ReserveMarks):
        verdict.violations += replayed_reserves(await ledger.reserve_marks())
    return verdict


def _describe_mark(mark: ReserveMark) -> str:
    return f"{mark.first}..{mark.mark} (session {mark.session} of {mark.holder}, {mark.owner})"


def replayed_reserves(marks: list[ReserveMark]) -> list[Violation]:
    """Spans of one reserve that two openings of its journal may both have handed out."""
    found = []
    by_reserve: dict[tuple[str, int], list[ReserveMark]] = {}
    for mark in marks:
        if mark.served:
            by_reserve.setdefault((mark.namespace, mark.start), []).append(mark)
    for (namespace, start), spans in sorted(by_reserve.items()):
        spans.sort(key=lambda mark: mark.first)
        reach = spans[0]
        for mark in spans[1:]:
            if mark.first <= reach.mark:
                found.append(
                    Violation(
                        "reserve_replayed",
                        namespace,
                        f"reserve starting at {start}: {_describe_mark(reach)} and "
                        f"{_describe_mark(mark)} share IDs",
                    )
                )
            if mark.mark > reach.mark:
                reach = mark
    return found


class Auditor:
    """One instance's background check of its own new grants (``holder_prefix``)."""

    def __init__(self, ledger: Ledger, holder_prefix: str) -> None:
        self.ledger = ledger
        self.holder_prefix = holder_prefix
        self.violations = 0
        self.checked = 0
        self._after = 0
        self._counters: dict[str, int] = {}

    async def check(self) -> list[Violation]:
        """Check the next own grants (and every counter against what was seen before);
        count and log what is wrong. Ledger errors propagate (the next round tries again)."""
        found = []
        mine = await self.ledger.grants(
            after=self._after, holder_prefix=self.holder_prefix, limit=ROUND
        )
        # After the grants, as in audit_ledger: each grant read is below the counter then.
        counters = {s.namespace: s.last_id for s in await self.ledger.status()}
        for namespace, last in counters.items():
            if last < self._counters.get(namespace, 0):
                previous = self._counters[namespace]
                found.append(Violation("counter_regressed", namespace, f"{previous} -> {last}"))
        self._counters = counters
        for grant in mine:
            others = [
                g
                for g in await self.ledger.overlapping(grant.namespace, grant.start, grant.end)
                if g.id != grant.id
            ]
            found += [
                Violation("overlap", grant.namespace, f"{_describe(grant)} and {_describe(o)}")
                for o in others
            ]
            if grant.end > counters.get(grant.namespace, 0):
                found.append(Violation("above_counter", grant.namespace, _describe(grant)))
            self._after = grant.id
        self.checked += len(mine)
        for violation in found:
            log.critical(
                "audit: %s in %r: %s", violation.kind, violation.namespace, violation.detail
            )
        self.violations += len(found)
        return found
