"""The baseline ``keygen bench`` measures beside Keygen: the least a ``POST /allocate`` server
must do, served by the same uvicorn (uvloop, httptools, one worker, no access log).

It reads the body, parses it with msgspec and answers a constant of an allocation's shape
(``source: "bare"``): the gap between it and Keygen at the same offered rate is what Keygen's
routing, validation, allocation and bookkeeping cost. It lives in the package so that an
installed ``keygen bench`` can start it; the wrk runners of ``benchmarks/`` serve it too
(``benchmarks/bare_app.py``). It imports nothing else of Keygen, on purpose.

    python -m uvicorn keygen.bench.bare:app --loop uvloop --http httptools --no-access-log
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

__all__ = ["ALLOCATION", "app"]


class _Request(msgspec.Struct, forbid_unknown_fields=True):
    size: int | None = None
    namespace: str | None = None


_decode = msgspec.json.Decoder(_Request).decode

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


_OK_HEADERS = _headers(ALLOCATION)


async def _answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
    """``POST /allocate``: the constant allocation; ``GET /health``: ``{}``; else 404."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "http":
        return
    if scope["path"] == "/health":
        await _answer(send, 200, b"{}", _headers(b"{}"))
        return
    if scope["path"] != "/allocate" or scope["method"] != "POST":
        await _answer(send, 404, b'{"error":"not_found"}', _headers(b'{"error":"not_found"}'))
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    try:
        _decode(body)
    except msgspec.DecodeError:
        error = b'{"error":"invalid_request"}'
        await _answer(send, 400, error, _headers(error))
        return
    await _answer(send, 200, ALLOCATION, _OK_HEADERS)
