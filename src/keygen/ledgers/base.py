"""The seam every ledger implements: the durable, forward-only authority over counters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from keygen.constants import MAX_ID
from keygen.ranges import IdRange
from keygen.rates import Rates


@dataclass(frozen=True, slots=True)
class NamespaceStatus:
    """A namespace as the ledger sees it."""

    namespace: str
    last_id: int  # highest ID ever granted; 0 when none was
    grants: int  # grants recorded in the audit trail

    @property
    def next_id(self) -> int:
        return self.last_id + 1

    @property
    def headroom(self) -> int:
        """IDs still grantable before 2**63 - 1."""
        return MAX_ID - self.last_id


@dataclass(frozen=True, slots=True)
class ReserveUsage:
    """What an instance did with an emergency reserve the ledger granted it, reported once the
    reserve is retired: IDs ``start..used_end`` may have been handed out, the rest never will."""

    namespace: str
    start: int  # the reserve as granted
    end: int
    used_end: int  # highest ID possibly handed out; start - 1 when none was
    holder: str
    note: str = ""  # why it was retired ("replaced", "journal damaged: ...")

    @property
    def ids_used(self) -> int:
        return self.used_end - self.start + 1

    @property
    def ids_wasted(self) -> int:
        return self.end - self.used_end


@dataclass(frozen=True, slots=True)
class ReserveMark:
    """What one opening of a reserve journal (a *session*) may have handed out of a reserve:
    IDs ``first..mark``. Recorded in the ledger whenever it answers, so that a journal copied
    or rewound is caught by the marks another session recorded (``docs/reserve.md``)."""

    namespace: str
    start: int  # the reserve as granted
    end: int
    session: str  # the journal's opening (random, one per process start)
    owner: str  # the data dir's identity (journal ``data.id``)
    holder: str
    first: int  # the first ID this session may serve
    mark: int  # highest ID this session may have handed out; first - 1 when none

    @property
    def served(self) -> bool:
        return self.mark >= self.first


@runtime_checkable
class ReserveMarks(Protocol):
    """The ledger's record of the reserves' marks (both ledgers keep one)."""

    async def record_reserve_mark(self, mark: ReserveMark) -> int:
        """Record (or raise) the session's mark of the reserve; return the highest mark any
        *other* session recorded for the same reserve (``start - 1`` when none did).

        Raises:
            LedgerUnavailable: the ledger cannot be reached or did not commit.
        """
        ...

    async def reserve_marks(self) -> list[ReserveMark]:
        """Every mark recorded, by namespace, reserve and first ID."""
        ...


@dataclass(frozen=True, slots=True)
class Grant:
    """One row of the audit trail: a span the ledger granted, once."""

    id: int  # in the order the grants were committed
    namespace: str
    start: int
    end: int
    kind: str
    holder: str
    #: The API key(s) of the request(s) it was made for (``keygen/requester.py``); empty
    #: without keys.
    requested_by: str = ""


@dataclass(frozen=True, slots=True)
class KeyUsage:
    """What one API key allocated on one UTC day (``keygen ledger status --keys``)."""

    key_id: str
    day: str  # YYYY-MM-DD, UTC
    requests: int
    ids: int


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """An API key as the ledger keeps it: never the token, only its keyed hash
    (``keygen/auth_tokens.py``)."""

    id: str
    name: str
    digest: str  # hex HMAC-SHA256 of the token under the server secret
    scopes: tuple[str, ...]
    secret_id: str  # a fingerprint of the server secret that made ``digest``, not the secret
    created_at: float  # epoch seconds
    revoked_at: float | None = None
    rates: Rates = field(default_factory=Rates)  # its rate limits (none: unlimited)


class Ledger(Protocol):
    """Grants spans of a namespace's counter, each exactly once, durably.

    A grant is committed before it is returned: a span handed out is never handed out again,
    whatever crashes afterwards. Namespaces are created on first use.
    """

    #: What the ledger is ("sqlite", "postgresql"); it is also the `source` of ranges served
    #: straight from it.
    name: str

    async def grant(self, namespace: str, count: int, *, kind: str, holder: str) -> IdRange:
        """Grant the next ``count`` IDs of ``namespace`` and record the grant in the audit trail.

        Raises:
            NamespaceExhausted: fewer than ``count`` IDs are left below 2**63 - 1.
            LedgerUnavailable: the ledger cannot be reached or did not commit.
        """
        ...

    async def advance_to(self, namespace: str, last_id: int) -> int:
        """Raise the namespace's counter so no ID up to ``last_id`` is granted again.

        Never lowers it. Returns the counter's (possibly unchanged) last granted ID.
        """
        ...

    async def record_reserve_usage(self, usage: ReserveUsage) -> bool:
        """Record in the audit trail what became of an emergency reserve, once per reserve
        (recording it again changes nothing), and raise the namespace's counter to at least
        the reserve's end, in the same transaction: a ledger restored from an older backup
        never grants the reserve again.

        Returns whether the audit trail holds the reserve's grant (False: this ledger did not
        grant it, e.g. it was restored from a backup older than the grant).

        Raises:
            LedgerUnavailable: the ledger cannot be reached or did not commit.
        """
        ...

    async def status(self) -> list[NamespaceStatus]:
        """Every namespace, ordered by name."""
        ...

    async def grants(
        self, *, after: int = 0, holder_prefix: str | None = None, limit: int = 10_000
    ) -> list[Grant]:
        """Grants of the audit trail with an id above ``after``, in id order, at most
        ``limit`` (page on with the last id); only those whose holder starts with
        ``holder_prefix`` when given."""
        ...

    async def overlapping(self, namespace: str, start: int, end: int) -> list[Grant]:
        """Every grant of ``namespace`` that shares an ID with ``start..end``."""
        ...

    async def add_api_key(self, key: ApiKeyRecord) -> None:
        """Store a new API key (its id and digest are new).

        Raises:
            LedgerUnavailable: the ledger cannot be reached or did not commit.
        """
        ...

    async def api_keys(self) -> list[ApiKeyRecord]:
        """Every API key, revoked ones included, in the order they were created."""
        ...

    async def revoke_api_key(self, key_id: str) -> bool:
        """Mark the key revoked; False when no key has that id or it was revoked already."""
        ...

    async def add_key_usage(self, day: str, usage: dict[str, tuple[int, int]]) -> None:
        """Add ``{key id: (requests, ids)}`` to the usage of ``day`` (YYYY-MM-DD, UTC).

        Raises:
            LedgerUnavailable: the ledger cannot be reached or did not commit.
        """
        ...

    async def key_usage(self, since_day: str) -> list[KeyUsage]:
        """The usage of every key from ``since_day`` on, by day then key."""
        ...

    async def ping(self) -> None:
        """Raise LedgerUnavailable unless the ledger answers."""
        ...

    async def aclose(self) -> None: ...


def like_prefix(prefix: str | None) -> str:
    """A LIKE pattern matching what starts with ``prefix`` (any text when None)."""
    if prefix is None:
        return "%"
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
