"""uvicorn's httptools protocol with the limits an edge exposed to a network needs.

uvicorn (0.54 and 0.55) cannot do these itself, which is why this subclass exists (docs/security.md
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
  of them (``receive()`` resumes reading), without bound;
- an Upgrade request's body is never read (httptools stops at the end of its head) and the
  request is served with an empty one; CONNECT and targets that do not parse drop the
  connection with a traceback; repeated or missing ``Host``, repeated ``Authorization``
  are served.

So: the bytes of a request's head are counted as they arrive (431 past
``KEYGEN_MAX_HEADER_BYTES``); one sweeper per server closes connections whose head has
taken longer than ``KEYGEN_HEADER_TIMEOUT``, or whose body longer than
``KEYGEN_BODY_TIMEOUT`` after its head (408: a body that never arrives would hold its request
for ever, and a graceful shutdown with it), which costs the hot path a few attribute writes
per request rather than a timer (or a deadline registered by the app: that cost about 1.6 %
of a request's instructions); past ``KEYGEN_MAX_CONNECTIONS`` the longest-idle
connection is closed to make room, or the newcomer gets a 503 when none is idle; more than
``KEYGEN_MAX_PIPELINE`` waiting requests close the connection (none of them had started, so
none allocated anything). An Upgrade request is served as if it had no ``Upgrade``
(``_replay``: nothing is ever upgraded); the head's target and its fields of one value are
checked as they are parsed (``heads.py``: a 400). Every refusal is the service's JSON error
shape, and counted in ``keygen_rejected_requests_total`` once the service runs.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from keygen.api import heads
from keygen.api.edge import Edge, EdgeLimits, find_keygen, raise_descriptor_limit
from keygen.api.responses import error_body
from keygen.config import Settings
from keygen.errors import (
    BadTarget,
    HeadersTooLarge,
    RequestError,
    ServiceError,
    TooManyConnections,
    TooManyPipelined,
)

__all__ = ["KeygenHttpProtocol", "raise_descriptor_limit"]

#: uvicorn's access log, whose lines carry the request's query (``heads.RedactQuery``).
_ACCESS_LOG = logging.getLogger("uvicorn.access")
_REDACT_QUERY = heads.RedactQuery()
#: The first letters of the fields of ``heads.SCREENED`` but Host.
_SCREENED_INITIALS = bytes({name[0] for name in heads.SCREENED if name != b"host"})


class _HeadTooLarge(Exception):
    """Raised in the parser's callback: the request's head, read whole, was over the limit."""


class _PipelineFull(Exception):
    """Raised from a parser callback to stop parsing the rest of the bytes received."""


class KeygenHttpProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with the edge's limits (see the module docstring)."""

    _edges: ClassVar[dict[int, Edge]] = {}
    # Slots, not instance attributes: uvicorn's protocol already has 28, and past 30 CPython
    # (3.11) stops sharing the instance dicts' keys, which slows every attribute access of
    # every request (about 1.3 us per request, measured).
    __slots__ = ("body_started", "edge", "head_bytes", "head_started", "host", "in_head", "seen")

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
            keygen = find_keygen(self.app)
            settings = keygen.api.state.settings if keygen is not None else Settings()
            edge = Edge(EdgeLimits.of(settings), self.loop, keygen)
            self._edges[id(server_state)] = edge
            _ACCESS_LOG.addFilter(_REDACT_QUERY)  # once: a filter is not added twice
        self.edge = edge
        # No upgrade is ever performed: an Upgrade request (WebSocket, h2c, ...) is served as
        # the HTTP/1.1 request it also is (``_replay``), so no WebSocket scope is made here.
        self.ws_protocol_class = None
        self.timeout_keep_alive = edge.limits.keepalive_timeout  # type: ignore[assignment]
        self.in_head = True  # between a request's first byte (or the connection) and its headers
        self.head_started = 0.0
        self.head_bytes = 0
        #: When the latest request's head was complete: its body is timed from then.
        self.body_started = 0.0
        #: The head's Host value, and the bits (``heads``) of the other fields seen once.
        self.host: bytes | None = None
        self.seen = 0

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
        except httptools.HttpParserUpgrade as exc:
            # Replayed below, once out of this handler: an error httptools raises in the
            # replay would have its cause replaced by this exception (its __context__).
            upgrade_head_end: int = exc.args[0]
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, RequestError):  # raised by the checks of ``heads``
                self.refuse(cause)
                return
            if isinstance(cause, _HeadTooLarge):
                self._refuse_head()
                return
            if isinstance(cause, _PipelineFull):
                # Not answered: the client reads nothing, and a response is being written.
                self.refuse(TooManyPipelined("too many pipelined requests"), answer=False)
                return
            if isinstance(cause, httptools.HttpParserInvalidURLError):  # uvicorn's parse_url
                self.refuse(BadTarget("the request target is not a URI"))
                return
            raise
        except httptools.HttpParserError as exc:
            detail = str(exc) or "the request is not valid HTTP/1.1"
            self.refuse(RequestError(f"invalid HTTP request: {detail}"))
            return
        else:
            if self.in_head and self.head_bytes > self.edge.limits.max_header_bytes:
                self._refuse_head()
            return
        self._replay(data[upgrade_head_end:])

    def _refuse_head(self) -> None:
        self.refuse(
            HeadersTooLarge(
                f"the request line and headers must be at most "
                f"{self.edge.limits.max_header_bytes} bytes"
            )
        )

    def send_400_response(self, msg: str) -> None:
        self.refuse(RequestError(msg))

    def _replay(self, rest: bytes) -> None:
        """Serve an Upgrade request as if it had no Upgrade header (RFC 9110 §7.8 lets a
        server ignore it), its body read and checked as any other's.

        httptools stops at the end of an upgrade's head, the body unread (uvicorn then served
        the request with an empty body): a fresh parser is given the same head without
        ``Upgrade``, and ``rest``, the bytes after the head. CONNECT was refused with the head.
        """
        parser = self.parser
        head = heads.replayed_head(
            parser.get_method(), self.url, parser.get_http_version(), self.headers
        )
        self.parser = httptools.HttpRequestParser(self)
        # As uvicorn's own parser: answer the first of pipelined requests sent with a close.
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.data_received(head + rest)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.host = None
        self.seen = 0
        if not self.in_head:  # a keep-alive connection's next request: its head starts now
            self.in_head = True
            self.head_started = self.edge.now

    def on_header(self, name: bytes, value: bytes) -> None:
        # uvicorn's, with the fields of ``heads.SCREENED`` looked at (its own "expect" too).
        name = name.lower()
        # llhttp keeps trailing OWS, which RFC 9110 §5.5 excludes from the value.
        value = value.rstrip(b" \t")
        # Cheap tests first: a set lookup hashes the name, which cost about 400 instructions
        # a header (callgrind); a comparison and a byte search cost a tenth of that.
        if name == b"host":
            if self.host is not None:
                raise heads.repeated(name)
            self.host = value
        elif name[0] in _SCREENED_INITIALS:
            self._screen(name, value)
        self.headers.append((name, value))

    def _screen(self, name: bytes, value: bytes) -> None:
        """A field whose name starts as one of ``heads.SCREENED`` does, but not Host (raises
        what it refuses)."""
        if name not in heads.SCREENED:
            return
        if name == b"authorization":
            if self.seen & heads.AUTHORIZATION:
                raise heads.repeated(name)
            self.seen |= heads.AUTHORIZATION
        elif name == b"expect":
            if value.lower() == b"100-continue":
                self.expect_100_continue = True
        else:
            heads.check_coding(name, value)

    def on_headers_complete(self) -> None:
        # The bytes read count the body too when it came in the same read as the head: only
        # then is the head itself measured (a request whose whole head came in one read,
        # over the limit, must be refused as one sent a byte at a time is).
        limit = self.edge.limits.max_header_bytes
        if self.head_bytes > limit and self._head_size() > limit:
            raise _HeadTooLarge
        self.in_head = False
        self.head_bytes = 0
        edge = self.edge
        self.body_started = edge.now
        host = self.host
        # The Host of the request before, most often: one comparison, no hash.
        if host != edge.last_host:
            self._check_host(host)
        if self.url[0] != 0x2F:  # not origin-form (/path): absolute, authority or asterisk
            heads.check_target(self.url, self.parser.get_method(), host)
        super().on_headers_complete()
        if len(self.pipeline) > edge.limits.max_pipeline:
            raise _PipelineFull

    def _should_upgrade(self) -> bool:
        # uvicorn asks this only of an upgrade's head (``parser.should_upgrade()``), and then
        # makes no request of it: httptools stops there, and ``data_received`` replays the
        # head without Upgrade. CONNECT aside, which has no request to serve.
        if self.parser.get_method() == b"CONNECT":
            raise heads.connect()
        return True

    def _check_host(self, host: bytes | None) -> None:
        """Refuse a Host that is not one, or none on HTTP/1.1 (raises what it refuses)."""
        if host is not None:
            if host not in self.edge.known_hosts:
                heads.check_host(host, self.edge.known_hosts)
            self.edge.last_host = host
        elif self.parser.get_http_version() != "1.0":
            raise heads.missing_host()

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
