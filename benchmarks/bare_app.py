"""The baseline of ``benchmarks/allocate.py``: ``POST /allocate`` with no framework and no work.

A req/s figure on its own says more about the machine than about Keygen. This app does the
least any ``POST /allocate`` server must do: read the body, parse it with msgspec, and answer
a body of the same shape as an allocation (a constant). Served by the same uvicorn with the
same options, the gap between it and Keygen is what Keygen's routing, validation, allocation
and bookkeeping cost; the issue's target is Keygen at no less than half its throughput.

The runner starts it as ``uvicorn bare_app:app --app-dir benchmarks ...``; it imports nothing
from Keygen, on purpose.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec

Message = MutableMapping[str, Any]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class AllocateRequest(msgspec.Struct, forbid_unknown_fields=True):
    size: int | None = None
    namespace: str | None = None


_decode_request = msgspec.json.Decoder(AllocateRequest).decode

#: What an allocation of ``{"size": 1000}`` looks like, encoded once.
ALLOCATION = msgspec.json.encode(
    {
        "start": 1,
        "end": 1000,
        "size": 1000,
        "namespace": "default",
        "source": "bare",
        "timestamp": 1700000000.123456,
    }
)


def _headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]


_ALLOCATION_HEADERS = _headers(ALLOCATION)


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    # Answered so that uvicorn's lifespan "auto" runs the same steps as for Keygen.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Parse the ``POST /allocate`` body and answer the constant allocation."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    if scope["path"] != "/allocate" or scope["method"] != "POST":
        body = b'{"error":"not_found"}'
        await _send(send, 404, body, _headers(body))
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    try:
        _decode_request(body)
    except msgspec.DecodeError:  # ValidationError included
        error = b'{"error":"invalid_request"}'
        await _send(send, 400, error, _headers(error))
        return
    await _send(send, 200, ALLOCATION, _ALLOCATION_HEADERS)
