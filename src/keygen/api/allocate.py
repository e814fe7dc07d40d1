"""``POST /allocate`` as pure ASGI: the hot path pays for no framework.

Routing, a pydantic model and a response object per request would cost more than the
allocation itself, so this endpoint sits in front of the FastAPI app: it reads the body with
a size limit, decodes and validates it with msgspec, asks the allocator, and writes the
response itself. Every other path goes on to FastAPI. When API keys are required
(``keygen/auth.py``) the check is here too, for every path: one HMAC and one dict lookup,
before the body is read; the namespace's scope after it parsed, before anything is
allocated. The endpoint is still documented in the OpenAPI schema (see ``openapi.py``), from
the same limits it enforces.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import msgspec
from starlette.types import Message, Receive, Scope, Send

from keygen.api.responses import error_body
from keygen.auth import OPEN, Grants, KeyStore, bearer_token
from keygen.constants import DEFAULT_NAMESPACE, NAMESPACE_PATTERN
from keygen.errors import (
    ClientDisconnected,
    Forbidden,
    HostNotAllowed,
    InvalidRequest,
    KeysUnavailable,
    MalformedJSON,
    MethodNotAllowed,
    PayloadTooLarge,
    ServiceError,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from keygen.ranges import AllocatedRange
from keygen.requester import REQUESTED_BY

if TYPE_CHECKING:
    from fastapi import FastAPI

    from keygen.config import Settings
    from keygen.quotas import Quotas
    from keygen.service import Keygen

log = logging.getLogger(__name__)
#: With KEYGEN_ACCESS_LOG on: a line per allocation, naming the range and the key it went to.
access_log = logging.getLogger("keygen.access")

ALLOCATE_PATH = "/allocate"
#: Paths served without a key, whatever KEYGEN_AUTH says: orchestrators' probes (status only).
OPEN_PATHS = frozenset({"/health/live", "/health/ready"})
HEALTH_PATH = "/health"
#: What ``/health`` answers to a request without the ``read`` scope: the status only.
HEALTH_STATUS_PATH = "/health/ready"


class AllocateRequest(msgspec.Struct, forbid_unknown_fields=True):
    # A float is taken when it is integral: ``1.0`` is an integer to JSON Schema too.
    size: int | float | None = None
    namespace: str | None = None


_decode_request = msgspec.json.Decoder(AllocateRequest).decode
_encode_allocation = msgspec.json.Encoder().encode
_JSON_HEADERS = [(b"content-type", b"application/json")]


def parse_request(body: bytes, settings: Settings) -> tuple[str, int]:
    """Decode and validate a request body into (namespace, size)."""
    try:
        request = _decode_request(body) if body.strip() else AllocateRequest()
    except msgspec.ValidationError as exc:
        raise InvalidRequest(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise MalformedJSON(f"the body is not valid JSON: {exc}") from None
    size = settings.id_block_size if request.size is None else request.size
    if isinstance(size, float):
        if not size.is_integer():
            raise InvalidRequest(f"size must be an integer, got {size!r}")
        size = int(size)
    if not 1 <= size <= settings.max_block_size:
        raise InvalidRequest(f"size must be between 1 and {settings.max_block_size}, got {size}")
    namespace = request.namespace
    if namespace is None:
        return DEFAULT_NAMESPACE, size
    if NAMESPACE_PATTERN.fullmatch(namespace) is None:  # not .match: "$" admits a "\n"
        raise InvalidRequest(
            f"namespace must match {NAMESPACE_PATTERN.pattern} (lowercase letters, digits, "
            f"'_', '.', '-'; at most 64 characters), got {namespace[:80]!r}"
        )
    return namespace, size


def _is_json(content_type: bytes) -> bool:
    media_type = content_type.split(b";", 1)[0].strip().lower()
    return media_type == b"application/json" or (
        media_type.startswith(b"application/") and media_type.endswith(b"+json")
    )


def headers_of(scope: Scope) -> dict[bytes, bytes]:
    """A request's headers by name. A dict, not a loop over the pairs on each look: a
    repeated header counts by its last value (a repeated Content-Length, Host or
    Authorization never gets here from ``keygen serve``: its edge refuses them)."""
    return dict(scope["headers"])


async def read_body(headers: dict[bytes, bytes], receive: Receive, limit: int) -> bytes:
    """Read the request body, refusing it as soon as it is over ``limit`` bytes or not JSON.
    (A body that does not arrive is the edge's to time out: ``protocol.py``.)"""
    length = headers.get(b"content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"the body must be at most {limit} bytes")
    content_type = headers.get(b"content-type")
    # Required even without a body: a cross-site form or fetch() without a JSON type is a
    # "simple" request that browsers send without asking (CORS preflight) first.
    if content_type is None:
        raise UnsupportedMediaType("POST /allocate needs Content-Type: application/json")
    if content_type != b"application/json" and not _is_json(content_type):
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, got {content_type.decode('latin-1')[:80]!r}"
        )
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            # http.disconnect: the client hung up, or the edge refused the rest (a bad chunk,
            # a body too slow): what arrived is not the body, so it must allocate nothing.
            raise ClientDisconnected("the client disconnected before its body arrived")
        chunk: bytes = message.get("body", b"")
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"the body must be at most {limit} bytes")
        if not message.get("more_body", False):
            break
    return body


class AllocateEndpoint:
    """Serves ``POST /allocate`` and passes everything else to the FastAPI app."""

    def __init__(self, api: FastAPI) -> None:
        self.api = api
        settings: Settings = api.state.settings
        self.allowed_hosts = settings.allowed_host_list
        self.access_log = settings.access_log
        #: Handed over by the app's lifespan (``app.py``) once the service runs: an attribute
        #: of this object, because a lookup in Starlette's ``app.state`` costs about 1 µs.
        self.service: Keygen | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.allowed_hosts is not None and scope["type"] != "lifespan":
            host = _host_of(scope)
            if not host_allowed(host, self.allowed_hosts):
                await self._refuse(
                    scope, send, HostNotAllowed(f"Host {host[:80]!r} is not served here")
                )
                return
        if scope["type"] != "http" or scope["path"] != ALLOCATE_PATH:
            await self._pass_on(scope, receive, send)
            return
        service = self.service
        if service is None:  # before the lifespan started it, or after it stopped it
            down = ServiceUnavailable("the service is not running (starting or stopping)")
            await _send(send, down.status_code, error_body(down.code, down.message), down.headers())
            return
        counters, auth, settings = service.counters, service.auth, service.settings
        try:
            # Before the body is read: a request without a valid key costs nothing more.
            headers = headers_of(scope)
            key = headers.get(b"authorization")
            grants = auth.authenticate(bearer_token(key)) if auth.enforced else OPEN
            if scope["method"] != "POST":
                raise MethodNotAllowed(f"{scope['method']} is not allowed here", allow="POST")
            body = await read_body(headers, receive, settings.max_body_bytes)
            namespace, size = parse_request(body, settings)
            if grants is not OPEN or service.quotas.namespaced:
                _admit(grants, service.quotas, namespace, size)
            allocation = await service.allocator.allocate(namespace, size)
        except ClientDisconnected as exc:
            counters.record_rejected(exc.code)  # no response: nobody is left to read it
            return
        except ServiceError as exc:
            counters.record_rejected(exc.code)
            counters.record_response(ALLOCATE_PATH, exc.status_code)
            await _send(send, exc.status_code, error_body(exc.code, exc.message), exc.headers())
            return
        except Exception:
            log.exception("POST /allocate failed")
            counters.record_response(ALLOCATE_PATH, 500)
            await _send(send, 500, error_body("internal_error", "internal error"))
            return
        counters.record_response(ALLOCATE_PATH, 200)
        id_range = allocation.range
        if grants is not OPEN:
            service.usage.record(grants.key_id, size)
        if self.access_log:
            access_log.info(
                "allocated %s %d-%d (%d) from %s to %s",
                id_range.namespace,
                id_range.start,
                id_range.end,
                id_range.size,
                allocation.source,
                grants.label or "a request without a key",
            )
        await _send(
            send,
            200,
            _encode_allocation(
                AllocatedRange(
                    id_range.start, id_range.end, size, namespace, allocation.source, time.time()
                )
            ),
        )

    def _startup_failure_in_one_line(self, send: Send) -> Send:
        """The lifespan's ``send``, with a start-up refused for a reason of Keygen's own (a
        wrong password, an unusable data dir: ``app.py`` keeps it) said in one line instead of
        the traceback Starlette sends and uvicorn logs."""

        async def one_line(message: Message) -> None:
            reason = getattr(self.api.state, "startup_error", None)
            if message["type"] == "lifespan.startup.failed" and reason is not None:
                message = {**message, "message": f"keygen cannot start: {reason}"}
            await send(message)

        return one_line

    async def _pass_on(self, scope: Scope, receive: Receive, send: Send) -> None:
        """To the FastAPI app, counting the response's status."""
        service = self.service
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] == "lifespan":
            await self.api(scope, receive, self._startup_failure_in_one_line(send))
            return
        if scope["type"] != "http" or service is None:  # before start-up
            await self.api(scope, receive, send)
            return
        counters, path = service.counters, scope["path"]
        if service.auth.enforced and path not in OPEN_PATHS:
            try:
                scope = _gate(scope, path, service.auth)
            except ServiceError as exc:
                counters.record_rejected(exc.code)
                counters.record_response(path, exc.status_code)
                await _send(send, exc.status_code, error_body(exc.code, exc.message), exc.headers())
                return

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                counters.record_response(path, message["status"])
            await send(message)

        await self.api(scope, receive, counted)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket handshake goes on to the FastAPI app only with the key any path needs
        (``keygen serve``'s protocol makes none: it upgrades nothing; another server may)."""
        service = self.service
        try:
            if service is None:
                raise ServiceUnavailable("the service is not running (starting or stopping)")
            if service.auth.enforced and scope["path"] not in OPEN_PATHS:
                scope = _gate(scope, scope["path"], service.auth)
        except ServiceError as exc:
            await self._refuse(scope, send, exc)
            return
        await self.api(scope, receive, send)

    async def _refuse(self, scope: Scope, send: Send, error: ServiceError) -> None:
        """Answer ``error`` in the JSON error shape, counted; to a WebSocket handshake as
        an HTTP response where the server can send one, else as a close before accepting."""
        if self.service is not None:
            self.service.counters.record_rejected(error.code)
        body = error_body(error.code, error.message)
        if scope["type"] == "http":
            await _send(send, error.status_code, body, error.headers())
        elif "websocket.http.response" in (scope.get("extensions") or {}):
            headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
            start = "websocket.http.response.start"
            await send({"type": start, "status": error.status_code, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": error.code})


def _admit(grants: Grants, quotas: Quotas, namespace: str, size: int) -> None:
    """The key's scope for ``namespace``, then its and the namespace's rate limits.

    Raises:
        Forbidden: the key may not allocate in ``namespace``.
        RateLimited: over a limit (nothing is counted then).
    """
    if not grants.may_allocate(namespace):
        raise Forbidden(
            f"API key {grants.key_id} ({grants.name!r}) may not allocate in namespace "
            f"{namespace!r}: it needs a scope allocate:<glob> matching it"
        )
    if grants.rates is not None or quotas.namespaced:
        quotas.admit(grants.key_id, grants.rates, namespace, size)
    if grants.label:
        REQUESTED_BY.set(grants.label)  # this request's task: for the audit trail


def _gate(scope: Scope, path: str, auth: KeyStore) -> Scope:
    """The request as it may go on to the FastAPI app: every path but the open ones needs a
    key with the ``read`` scope; ``/health`` without one answers the status only.

    Raises:
        Unauthorized: no valid key (``/health``: a token given that is not one).
        Forbidden: a valid key without ``read``.
    """
    token = bearer_token(headers_of(scope).get(b"authorization"))
    if path == HEALTH_PATH:
        if token is None:
            return _status_only(scope)
        try:
            grants = auth.authenticate(token)
        except KeysUnavailable:
            return _status_only(scope)
        return scope if grants.read else _status_only(scope)
    grants = auth.authenticate(token)
    if not grants.read:
        raise Forbidden(
            f"API key {grants.key_id} ({grants.name!r}) has no 'read' scope, which {path[:80]} "
            "needs"
        )
    return scope


def _status_only(scope: Scope) -> Scope:
    return {**scope, "path": HEALTH_STATUS_PATH, "raw_path": HEALTH_STATUS_PATH.encode()}


def _host_of(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"host":
            host: str = value.decode("latin-1").lower()
            if host.startswith("["):  # [::1]:8010
                return host.partition("]")[0] + "]"
            return host.rpartition(":")[0] if ":" in host else host
    return ""


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """Whether ``host`` (lowercase, without its port) is one of ``allowed`` (``*.domain``
    names the domain's subdomains)."""
    for pattern in allowed:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]):
                return True
        elif host == pattern:
            return True
    return False


async def _send(
    send: Send, status: int, body: bytes, headers: dict[str, str] | None = None
) -> None:
    raw_headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    if headers:
        raw_headers.extend((k.lower().encode(), v.encode()) for k, v in headers.items())
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})
