"""uvicorn's httptools protocol with the limits an edge exposed to a network needs.

uvicorn (0.54) cannot do these itself, which is why this subclass exists (docs/security.md
has the evidence):

- its parser's refusals (a bad request line, Content-Length or chunk; an unknown method)
  are answered in ``text/plain``, with a warning logged for each one;
- httptools buffers a request's line and headers whole, with no limit: a 50 MB header line
  costs hundreds of MB;
- nothing times out a client that sends its headers a byte at a time (the keep-alive timer
  is cancelled by any byte), nor one that connects and says nothing;
- ``limit_concurrency`` refuses requests, not connections: idle connections are never
  refused, and they exhaust the process's descriptors;
- a client that pipelines requests without reading the answers makes it queue every one
  of them (``receive()`` resumes reading), without bound.

So: the bytes of a request's head are counted as they arrive (431 past
``KEYGEN_MAX_HEADER_BYTES``); one sweeper per server closes connections whose head has
taken longer than ``KEYGEN_HEADER_TIMEOUT``, or whose body longer than
``KEYGEN_BODY_TIMEOUT`` after its head (408: a body that never arrives would hold its request
for ever, and a graceful shutdown with it), which costs the hot path a few attribute writes
per request rather than a timer (or a deadline registered by the app: that cost about 1.6 %
of a request's instructions); past ``KEYGEN_MAX_CONNECTIONS`` the longest-idle
connection is closed to make room, or the newcomer gets a 503 when none is idle; more than
``KEYGEN_MAX_PIPELINE`` waiting requests close the connection (none of them had started, so
none allocated anything). Every refusal is the service's JSON error shape, and counted in
``keygen_rejected_requests_total`` once the service runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from keygen.api.allocate import AllocateEndpoint
from keygen.api.responses import error_body
from keygen.config import Settings
from keygen.errors import (
    HeadersTooLarge,
    RequestError,
    RequestTimeout,
    ServiceError,
    TooManyConnections,
    TooManyPipelined,
)

log = logging.getLogger(__name__)

#: At most one warning a minute about refused requests, with their count: a client sending
#: garbage in a loop must not fill the disk with log lines.
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


class _HeadTooLarge(Exception):
    """Raised in the parser's callback: the request's head, read whole, was over the limit."""


class _PipelineFull(Exception):
    """Raised from a parser callback to stop parsing the rest of the bytes received."""


class _Edge:
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
        self.refused = 0
        self.last_logged = 0.0
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
        service = None if self.app is None else self.app.service
        if service is not None:
            service.counters.record_rejected(error.code)
        self.refused += 1
        now = time.monotonic()
        if now - self.last_logged >= REFUSAL_LOG_INTERVAL:
            log.warning(
                "refused %d malformed or over-limit connection(s) since the last warning "
                "(the latest: %d %s)",
                self.refused,
                error.status_code,
                error.code,
            )
            self.refused, self.last_logged = 0, now


def _find_keygen(app: Any) -> AllocateEndpoint | None:
    """The Keygen app inside uvicorn's middleware, if that is what it serves."""
    for _ in range(8):
        if isinstance(app, AllocateEndpoint):
            return app
        app = getattr(app, "app", None)
        if app is None:
            break
    return None


class KeygenHttpProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with the edge's limits (see the module docstring)."""

    _edges: ClassVar[dict[int, _Edge]] = {}
    # Slots, not instance attributes: uvicorn's protocol already has 28, and past 30 CPython
    # (3.11) stops sharing the instance dicts' keys, which slows every attribute access of
    # every request (about 1.3 us per request, measured).
    __slots__ = ("body_started", "edge", "head_bytes", "head_started", "in_head")

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        edge = self._edges.get(id(server_state))
        if edge is None or edge.loop is not self.loop:
            keygen = _find_keygen(self.app)
            settings = keygen.api.state.settings if keygen is not None else Settings()
            edge = _Edge(EdgeLimits.of(settings), self.loop, keygen)
            self._edges[id(server_state)] = edge
        self.edge = edge
        self.timeout_keep_alive = edge.limits.keepalive_timeout  # type: ignore[assignment]
        self.in_head = True  # between a request's first byte (or the connection) and its headers
        self.head_started = 0.0
        self.head_bytes = 0
        #: When the latest request's head was complete: its body is timed from then.
        self.body_started = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        edge = self.edge
        self.head_started = edge.loop.time()
        if len(self.connections) > edge.limits.max_connections:
            victim = edge.longest_idle()
            if victim is None:
                self.refuse(TooManyConnections("too many connections; retry later"))
                return
            victim.close_idle()
        edge.members.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.edge.members.discard(self)
        self.pipeline.clear()
        super().connection_lost(exc)

    def reading_body(self) -> bool:
        """The latest request's head has arrived, but not all of its body (uvicorn's cycle
        says so: no callback of ours per request for it)."""
        cycle = self.cycle
        return not self.in_head and cycle is not None and cycle.more_body

    def idle(self) -> bool:
        """Nothing in flight and no request coming: a silent keep-alive connection (one
        that never sent a byte counts, its head timer running)."""
        cycle = self.cycle
        return (
            not self.pipeline
            and (cycle is None or cycle.response_complete)
            and self.head_bytes == 0
            and not self.transport.is_closing()
        )

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self.in_head:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._refuse_head()
                return
            if isinstance(exc.__context__, _PipelineFull):
                # Not answered: the client reads nothing, and a response is being written.
                self.refuse(TooManyPipelined("too many pipelined requests"), answer=False)
                return
            raise
        except httptools.HttpParserError as exc:
            detail = str(exc) or "the request is not valid HTTP/1.1"
            self.refuse(RequestError(f"invalid HTTP request: {detail}"))
            return
        if self.in_head and self.head_bytes > self.edge.limits.max_header_bytes:
            self._refuse_head()

    def _refuse_head(self) -> None:
        self.refuse(
            HeadersTooLarge(
                f"the request line and headers must be at most "
                f"{self.edge.limits.max_header_bytes} bytes"
            )
        )

    def send_400_response(self, msg: str) -> None:
        self.refuse(RequestError(msg))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self.in_head:  # a keep-alive connection's next request: its head starts now
            self.in_head = True
            self.head_started = self.edge.now

    def on_headers_complete(self) -> None:
        # The bytes read count the body too when it came in the same read as the head: only
        # then is the head itself measured (a request whose whole head came in one read,
        # over the limit, must be refused as one sent a byte at a time is).
        limit = self.edge.limits.max_header_bytes
        if self.head_bytes > limit and self._head_size() > limit:
            raise _HeadTooLarge
        self.in_head = False
        self.head_bytes = 0
        self.body_started = self.edge.now
        super().on_headers_complete()
        if len(self.pipeline) > self.edge.limits.max_pipeline:
            raise _PipelineFull

    def _head_size(self) -> int:
        """The request line and headers as received (the method and version are a few bytes,
        counted as the longest)."""
        fields = sum(len(name) + len(value) + 4 for name, value in self.headers)
        return len(self.url) + fields + 20

    def close_idle(self) -> None:
        """Close this idle connection to make room for a new one."""
        self.edge.members.discard(self)
        if not self.transport.is_closing():
            self.transport.close()

    def refuse(self, error: ServiceError, *, answer: bool = True) -> None:
        """Answer ``error`` in the JSON error shape (unless a response is already under way
        on this connection), and close the connection."""
        edge = self.edge
        edge.members.discard(self)
        self.in_head = False
        self.pipeline.clear()
        edge.count_refusal(error)
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            answer = answer and not cycle.response_started
            # The request in flight must neither read on nor write: its body never arrived.
            cycle.disconnected = True
            cycle.message_event.set()
        if not answer:
            self.transport.close()
            return
        body = error_body(error.code, error.message)
        content = [STATUS_LINE[error.status_code]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()
