"""A small client for the Keygen HTTP API, synchronous and asynchronous.

    with KeygenClient("http://127.0.0.1:8010") as keygen:
        ids = keygen.allocate(size=1000, namespace="orders")
        for order_id in range(ids.start, ids.end + 1): ...

A 503 (no layer could allocate) is retried after the server's ``Retry-After``, and a request
that could not reach its instance (refused, reset, timed out), got a 408 or another 5xx is
sent to the next of the given URLs, up to ``retries`` times in all; another 4xx is raised as
``KeygenAPIError`` at once. Retrying is always safe: a range whose response was lost is never
handed to anyone else, only wasted.

One client is meant to be shared by a program's tasks or threads. It keeps at most
``max_connections`` connections to each instance; more concurrent requests wait for one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Protocol

import httpx
import msgspec

from keygen.constants import DEFAULT_HOST, DEFAULT_PORT
from keygen.ranges import AllocatedRange

__all__ = ["AllocatedRange", "AsyncKeygenClient", "KeygenAPIError", "KeygenClient"]

DEFAULT_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
#: Longer than the service's default ALLOCATION_TIMEOUT (30 s), so its 503 arrives first.
DEFAULT_TIMEOUT = 35.0
MAX_RETRY_WAIT = 10.0
_decode_allocated = msgspec.json.Decoder(AllocatedRange).decode
#: Connections per instance. Few on purpose: httpcore's pool spends time in proportion to
#: its connections on every request, so a client shared by 50 tasks gets 1.7 times as many
#: requests through 10 connections as through httpx's default of 100, and 200 tasks 2.2
#: times (benchmarks/client.py). A request waits for a connection at most ``timeout``.
DEFAULT_MAX_CONNECTIONS = 10


class KeygenAPIError(Exception):
    """The service answered with an error."""

    def __init__(self, status_code: int, code: str, message: str, retry_after: float | None):
        super().__init__(f"{status_code} {code}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message
        self.retry_after = retry_after


def _request_body(size: int | None, namespace: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if size is not None:
        body["size"] = size
    if namespace is not None:
        body["namespace"] = namespace
    return body


def _error(response: httpx.Response) -> KeygenAPIError:
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", response.text[:200]
    retry_after = response.headers.get("retry-after")
    return KeygenAPIError(
        response.status_code,
        code,
        message,
        float(retry_after) if retry_after and retry_after.isdigit() else None,
    )


def _allocated(response: httpx.Response) -> AllocatedRange:
    if response.status_code != 200:
        raise _error(response)
    return _decode_allocated(response.content)


def _wait_before_retry(
    error: KeygenAPIError | httpx.TransportError, attempt: int, retries: int
) -> float | None:
    """Seconds to wait before the next attempt, or None when the error must be raised.

    A 503 waits for its Retry-After. A transport error (refused, reset, timed out), a 408 (the
    body was too slow to arrive: nothing was allocated) or another 5xx (an instance
    restarting, a proxy in front of it) moves on to the next URL at once. If the failed
    request was served after all, its range is simply never used.
    """
    if attempt >= retries:
        return None
    if isinstance(error, httpx.TransportError):
        return 0.0
    if error.status_code == 503:
        return min(error.retry_after or 1.0, MAX_RETRY_WAIT)
    return 0.0 if error.status_code >= 500 or error.status_code == 408 else None


class _HasCurrent(Protocol):
    _current: int


def _move_on(client: _HasCurrent, failed: int, count: int) -> int:
    """The instance a request tries after instance ``failed``: the next one. Later requests
    start there too, unless a concurrent request already moved the client on: many requests
    failing on one instance at once must all leave it, not turn the client back to it."""
    following = (failed + 1) % count
    if client._current == failed:
        client._current = following
    return following


def _limits(max_connections: int) -> httpx.Limits:
    """All of them kept alive: with a lower keep-alive limit the pool would close idle
    connections only to open new ones under the next burst."""
    if max_connections < 1:
        raise ValueError("max_connections must be at least 1")
    return httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)


def _urls(base_url: str | Sequence[str]) -> list[str]:
    urls = [base_url] if isinstance(base_url, str) else list(base_url)
    if not urls:
        raise ValueError("at least one URL is needed")
    return urls


class KeygenClient:
    """Synchronous client. With several URLs (instances), a request that cannot reach one
    instance is sent to the next."""

    def __init__(
        self,
        base_url: str | Sequence[str] = DEFAULT_URL,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 3,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retries = retries
        self._https = [
            httpx.Client(
                base_url=url, timeout=timeout, limits=_limits(max_connections), transport=transport
            )
            for url in _urls(base_url)
        ]
        self._current = 0

    def allocate(self, size: int | None = None, namespace: str | None = None) -> AllocatedRange:
        body = _request_body(size, namespace)
        index = self._current
        for attempt in range(self.retries + 1):
            try:
                return _allocated(self._https[index].post("/allocate", json=body))
            except (KeygenAPIError, httpx.TransportError) as error:
                wait = _wait_before_retry(error, attempt, self.retries)
                if wait is None:
                    raise
                index = _move_on(self, index, len(self._https))
                time.sleep(wait)
        raise AssertionError("unreachable")

    def health(self) -> dict[str, Any]:
        health: dict[str, Any] = self._https[self._current].get("/health").json()
        return health

    def close(self) -> None:
        for http in self._https:
            http.close()

    def __enter__(self) -> KeygenClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncKeygenClient:
    """Asynchronous client, for asyncio and AnyIO programs; URLs as in ``KeygenClient``."""

    def __init__(
        self,
        base_url: str | Sequence[str] = DEFAULT_URL,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 3,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retries = retries
        self._https = [
            httpx.AsyncClient(
                base_url=url, timeout=timeout, limits=_limits(max_connections), transport=transport
            )
            for url in _urls(base_url)
        ]
        self._current = 0

    async def allocate(
        self, size: int | None = None, namespace: str | None = None
    ) -> AllocatedRange:
        body = _request_body(size, namespace)
        index = self._current
        for attempt in range(self.retries + 1):
            try:
                return _allocated(await self._https[index].post("/allocate", json=body))
            except (KeygenAPIError, httpx.TransportError) as error:
                wait = _wait_before_retry(error, attempt, self.retries)
                if wait is None:
                    raise
                index = _move_on(self, index, len(self._https))
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def health(self) -> dict[str, Any]:
        health: dict[str, Any] = (await self._https[self._current].get("/health")).json()
        return health

    async def aclose(self) -> None:
        for http in self._https:
            await http.aclose()

    async def __aenter__(self) -> AsyncKeygenClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
