"""What the connections of one server share (``protocol.py``): the limits, who is idle,
the sweeper that times heads and bodies, the refusals' count and their throttled log."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from keygen.api.allocate import AllocateEndpoint
from keygen.config import Settings
from keygen.errors import RequestTimeout, ServiceError

if TYPE_CHECKING:
    from keygen.api.protocol import KeygenHttpProtocol

log = logging.getLogger(__name__)

#: At most one warning a minute about refused requests of each code, with their count: a
#: client sending garbage in a loop must not fill the disk with log lines.
REFUSAL_LOG_INTERVAL = 60.0


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    max_connections: int
    header_timeout: float
    body_timeout: float
    keepalive_timeout: float
    max_header_bytes: int
    max_pipeline: int

    @classmethod
    def of(cls, settings: Settings) -> EdgeLimits:
        return cls(
            settings.max_connections,
            settings.header_timeout,
            settings.body_timeout,
            settings.keepalive_timeout,
            settings.max_header_bytes,
            settings.max_pipeline,
        )


#: Descriptors a worker needs besides its clients' connections (ledger, Redis, journals, logs).
SPARE_DESCRIPTORS = 256


def raise_descriptor_limit(max_connections: int) -> int | None:
    """Raise the soft descriptor limit to what ``max_connections`` needs (up to the hard
    limit); return the limit when even that is too low (past it, accept() fails and nothing
    answers, not even ``/health``), else None."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + SPARE_DESCRIPTORS
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return None
    new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    except (ValueError, OSError):
        new = soft
    return None if new >= wanted else new


class Edge:
    """What the connections of one server share: the limits, who is idle, the sweeper."""

    def __init__(
        self, limits: EdgeLimits, loop: asyncio.AbstractEventLoop, app: AllocateEndpoint | None
    ) -> None:
        self.limits = limits
        self.loop = loop
        #: Where refusals are counted, once its service runs (None: an app of another kind).
        self.app = app
        #: Every open connection. A request only flips attributes of its own; the sets and
        #: scans are per connection or per sweep, never per request.
        self.members: set[KeygenHttpProtocol] = set()
        self.interval = min(1.0, limits.header_timeout / 4, limits.body_timeout / 4)
        #: The loop's clock as of the last sweep: a request's head and body are timed from
        #: it, at the cost of an attribute read (their deadlines are kept to an interval).
        self.now = loop.time()
        #: By error code: the refusals not logged since the last line, and when that was.
        self.refusals: dict[str, tuple[int, float]] = {}
        #: The Host values seen valid lately (``heads.check_host``), and the latest.
        self.known_hosts: set[bytes] = set()
        self.last_host = b"\0"  # no Host: the first request's is checked
        loop.call_later(self.interval, self.sweep)

    def sweep(self) -> None:
        """Close the connections whose request head or body is past its deadline."""
        self.now = self.loop.time()
        heads = self.now - self.limits.header_timeout
        bodies = self.now - self.limits.body_timeout
        late = [
            c
            for c in self.members
            if (c.in_head and c.head_started <= heads)
            or (c.body_started <= bodies and c.reading_body())
        ]
        for connection in late:
            if connection.in_head:
                message = "the request's headers came too slowly"
            else:
                message = f"the body did not arrive within {self.limits.body_timeout:g} s"
            connection.refuse(RequestTimeout(message))
        self.loop.call_later(self.interval, self.sweep)

    def longest_idle(self) -> KeygenHttpProtocol | None:
        """The idle connection (no request in flight or coming) whose last request began the
        earliest, if any: a close stand-in for the one idle the longest, at no cost per
        request."""
        idle = [c for c in self.members if c.idle()]
        return min(idle, key=lambda c: c.head_started, default=None)

    def count_refusal(self, error: ServiceError) -> None:
        """Count the refusal; log it unless one of its code was logged less than a minute
        ago (the next line says how many were not)."""
        service = None if self.app is None else self.app.service
        if service is not None:
            service.counters.record_rejected(error.code)
        unlogged, last = self.refusals.get(error.code, (0, -REFUSAL_LOG_INTERVAL))
        now = time.monotonic()
        if now - last < REFUSAL_LOG_INTERVAL:
            self.refusals[error.code] = (unlogged + 1, last)
            return
        self.refusals[error.code] = (0, now)
        log.warning(
            "refused %d malformed or over-limit request(s) or connection(s) with %d %s since "
            "the last warning of it (the latest: %s)",
            unlogged + 1,
            error.status_code,
            error.code,
            error.message[:200],
        )


def find_keygen(app: Any) -> AllocateEndpoint | None:
    """The Keygen app inside uvicorn's middleware, if that is what it serves."""
    for _ in range(8):
        if isinstance(app, AllocateEndpoint):
            return app
        app = getattr(app, "app", None)
        if app is None:
            break
    return None
