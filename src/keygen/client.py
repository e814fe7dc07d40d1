"""A small client for the Keygen HTTP API, synchronous and asynchronous.

    with KeygenClient("http://127.0.0.1:8010") as keygen:
        ids = keygen.allocate(size=1000, namespace="orders")
        for order_id in range(ids.start, ids.end + 1): ...

A request that could not reach its instance (refused, reset, timed out), got a 408 or a 5xx
is sent again, up to ``retries`` more times, all within ``timeout`` seconds from the call;
another 4xx is raised as ``KeygenAPIError`` at once. With several URLs each retry goes to the
next instance, at once if this request has not tried that instance yet. Before a request goes
back to an instance it already tried (always, with one URL) it waits: a 503's
``Retry-After`` (at most ``MAX_RETRY_WAIT``), else stamina's exponential backoff with jitter.
A 408 is sent again at once. When the attempts or the time run out, the last error is raised
with a note saying how many attempts were made, why they stopped and what each got. Each
retry is reported by stamina's instrumentation (a ``stamina.retry_scheduled`` warning on the
``stamina`` logger; ``stamina_retries_total`` if prometheus-client is installed), and
``stamina.set_testing`` removes the waits in tests. The backoff hook returns a wait of its
own (Retry-After, or none for an untried instance): that needs stamina 25.2 or later.

Retrying never risks a duplicate: the service never hands any ID to two requests, so a range
whose response was lost is only wasted, and a retry gets a range of its own.

One client is meant to be shared by a program's tasks or threads. It keeps at most
``max_connections`` connections to each instance; more concurrent requests wait for one.

An ``https://`` instance's certificate is checked against the system's CAs (httpx's), or
only against ``verify``'s; ``cert`` is the client certificate an instance that asks for one
(mTLS) is shown. A failed handshake (a certificate not trusted, a plain-HTTP port) is raised
at once, never retried: no attempt can go otherwise. A service that refuses the client's
certificate only closes the connection, which is retried as any disconnect (docs/tls.md).
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Sequence
from typing import Any, Protocol, TypeAlias

import httpx
import msgspec
import stamina

from keygen.constants import DEFAULT_HOST, DEFAULT_PORT
from keygen.ranges import AllocatedRange

__all__ = [
    "AllocatedRange",
    "AsyncKeygenClient",
    "Cert",
    "KeygenAPIError",
    "KeygenClient",
    "Verify",
    "tls_context",
    "tls_refusal",
]

#: How an instance's certificate is checked: True against the system's CAs (httpx's
#: default), False not at all, a PEM file (or a directory of them) of the CAs to trust, or
#: an ``ssl.SSLContext`` of the caller's.
Verify: TypeAlias = bool | str | os.PathLike[str] | ssl.SSLContext
#: The client certificate shown to an instance that asks for one: a PEM file holding the
#: certificate and its key, or (certificate file, key file).
Cert: TypeAlias = str | os.PathLike[str] | tuple[str | os.PathLike[str], str | os.PathLike[str]]

DEFAULT_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
#: The deadline of one ``allocate`` call, its attempts and waits included. Longer than the
#: service's default ALLOCATION_TIMEOUT (30 s), so that its 503 arrives first.
DEFAULT_TIMEOUT = 35.0
#: Retries after the first attempt. Enough to outlast an instance restarting (on one URL
#: their backoffs add up to 13-15.5 s), and the deadline bounds them anyway.
DEFAULT_RETRIES = 10
#: The longest a 503's Retry-After is honoured for.
MAX_RETRY_WAIT = 10.0
#: stamina's backoff before retry n (from 1): min(WAIT_MAX, WAIT_INITIAL * 2**(n-1) +
#: uniform(0, WAIT_JITTER)). The jitter spreads the clients of a restarting instance apart.
WAIT_INITIAL = 0.1
WAIT_MAX = 2.0
WAIT_JITTER = 0.5
#: No wait is begun that would leave the attempt after it less time than this.
MIN_ATTEMPT_TIME = 0.25
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


def tls_context(verify: Verify = True, cert: Cert | None = None) -> ssl.SSLContext | bool:
    """What httpx's ``verify`` is given for ``verify`` and ``cert``: ``verify`` itself when
    there is no client certificate and it is a bool or a context, else a context made here.

    Raises:
        OSError: A file cannot be read.
        ssl.SSLError: A file is not PEM, or the key is not the certificate's.
        ValueError: ``cert`` with a context of the caller's (load it into that context).
    """
    if isinstance(verify, ssl.SSLContext):
        if cert is not None:
            raise ValueError("load the client certificate into the SSLContext given as verify")
        return verify
    if cert is None and isinstance(verify, bool):
        return verify
    if verify is True:
        context = httpx.create_ssl_context()  # the system's CAs, as httpx finds them
    elif verify is False:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif os.path.isdir(verify):
        context = ssl.create_default_context(capath=os.fspath(verify))
    else:
        context = ssl.create_default_context(cafile=os.fspath(verify))
    if isinstance(cert, tuple):
        context.load_cert_chain(cert[0], cert[1])
    elif cert is not None:
        context.load_cert_chain(cert)
    return context


def tls_refusal(error: BaseException) -> ssl.SSLError | None:
    """The TLS error beneath a transport error that says the two sides' certificates or
    protocols disagree (an untrusted certificate, a plain-HTTP port), if it is one; not an
    end of file or a reset, which a restart causes too."""
    cause: BaseException | None = error
    for _ in range(8):  # httpx's error, httpcore's, then the ssl module's
        if cause is None:
            break
        if isinstance(cause, ssl.SSLError) and not isinstance(
            cause, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError
        ):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def _retryable(error: BaseException) -> bool:
    """A transport error (refused, reset, timed out), a 408 (the body was too slow to arrive:
    nothing was allocated) or a 5xx (no layer could allocate, an instance restarting, a proxy
    in front of it). If the failed request was served after all, its range is never used.
    Not a TLS refusal: the same certificates get the same answer."""
    if isinstance(error, httpx.TransportError):
        return tls_refusal(error) is None
    return isinstance(error, KeygenAPIError) and (
        error.status_code >= 500 or error.status_code == 408
    )


def _describe(error: BaseException) -> str:
    if isinstance(error, KeygenAPIError):
        return str(error)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


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


class _Attempts:
    """One ``allocate`` call's attempts: the instance each goes to, the time each may take,
    and (``backoff``, stamina's backoff hook) whether and how long to wait before the next."""

    def __init__(self, client: _HasCurrent, urls: Sequence[str], retries: int, timeout: float):
        self.client = client
        self.urls = urls
        self.retries = retries
        self.timeout = timeout
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.index = client._current
        self.tried = {self.index}
        self.failures: list[str] = []
        self.seen: BaseException | None = None  # the last error the hook was asked about
        self.stopped: str | None = None  # why the hook refused a retry after it

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def attempt_timeout(self) -> httpx.Timeout:
        """What is left of the deadline (a wait is never begun that leaves less than
        ``MIN_ATTEMPT_TIME``, but a sleep can overrun by a little)."""
        return httpx.Timeout(max(self.left(), 0.001))

    def backoff(self, error: BaseException) -> bool | float:
        """stamina's backoff hook: False to raise ``error``, True for stamina's exponential
        backoff with jitter, or the seconds to wait before the next attempt."""
        self.seen = error
        if not _retryable(error):
            return False
        self.failures.append(f"{self.urls[self.index]}: {_describe(error)}")
        if len(self.failures) > self.retries:
            self.stopped = f"no retries left (retries={self.retries})"
            return False
        left = self.left()
        if left < MIN_ATTEMPT_TIME:
            self.stopped = (
                f"the deadline (timeout={self.timeout:g}s) leaves no time for another "
                f"attempt ({max(left, 0.0):.2f}s left)"
            )
            return False
        self.index = _move_on(self.client, self.index, len(self.urls))
        if self.index not in self.tried:
            self.tried.add(self.index)
            return 0.0  # an instance this request has not tried yet: at once
        if isinstance(error, KeygenAPIError) and error.status_code == 408:
            return 0.0  # the instance is up; the body was slow
        if isinstance(error, KeygenAPIError) and error.retry_after is not None:
            wait = min(error.retry_after, MAX_RETRY_WAIT)
            if wait > left - MIN_ATTEMPT_TIME:
                self.stopped = (
                    f"Retry-After {wait:g}s would pass the deadline "
                    f"(timeout={self.timeout:g}s, {left:.2f}s left)"
                )
                return False
            return wait
        longest = min(WAIT_MAX, WAIT_INITIAL * 2 ** (len(self.failures) - 1) + WAIT_JITTER)
        if longest <= left - MIN_ATTEMPT_TIME:
            return True  # stamina draws the backoff, and it fits before the deadline
        return left - MIN_ATTEMPT_TIME  # cut short: the last attempt before the deadline

    def explain(self, error: Exception) -> None:
        """Note on ``error``, about to be raised, how many attempts were made and why no more."""
        if not _retryable(error):
            return  # the caller's error (or a malformed answer): not a matter of retrying
        if self.seen is not error:
            # stamina did not ask the hook: retrying is off (stamina.set_active(False)).
            self.failures.append(f"{self.urls[self.index]}: {_describe(error)}")
        # Without a reason of the hook's, stamina stopped: stamina.set_testing's attempts.
        stopped = self.stopped or "stamina stopped retrying (stamina.set_active/set_testing)"
        count = len(self.failures)
        shown = self.failures[-10:]
        first = count - len(shown) + 1
        lines = [
            f"keygen client: gave up after {count} attempt{'s' if count > 1 else ''} in "
            f"{time.monotonic() - self.started:.2f}s: {stopped}. Attempts:",
            *(f"  {first + i}. {failure}" for i, failure in enumerate(shown)),
        ]
        error.add_note("\n".join(lines))


def _headers(api_key: str | None) -> dict[str, str]:
    """The headers of every request: the API key, when one is given."""
    if api_key is None:
        return {}
    if not api_key.strip() or any(c in api_key for c in "\r\n"):
        raise ValueError("api_key must be a token such as kg_...")
    return {"Authorization": f"Bearer {api_key.strip()}"}


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


def _check(timeout: float, retries: int) -> None:
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    if retries < 0:
        raise ValueError("retries must not be negative")


class KeygenClient:
    """Synchronous client. With several URLs (instances), a request that cannot reach one
    instance is sent to the next.

    Args:
        base_url: One instance's URL, or several.
        timeout: Seconds one ``allocate`` call may take, its attempts and waits included.
        retries: Attempts after the first one, at most.
        max_connections: Connections kept to each instance.
        transport: httpx's transport (tests).
        api_key: An API key's token (``keygen keys create``), sent as
            ``Authorization: Bearer <token>`` with every request; a 401 or 403 is raised as
            ``KeygenAPIError`` at once, never retried.
        verify: How an ``https://`` instance's certificate is checked: True against the
            system's CAs, a PEM file of the CAs to trust, an ``ssl.SSLContext``, or False
            (not at all: for tests only).
        cert: The client certificate for an instance that requires one (mTLS): a PEM file
            with the certificate and its key, or (certificate file, key file).

    Raises:
        OSError, ssl.SSLError: A file of ``verify`` or ``cert`` cannot be read or used.
    """

    def __init__(
        self,
        base_url: str | Sequence[str] = DEFAULT_URL,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        transport: httpx.BaseTransport | None = None,
        api_key: str | None = None,
        verify: Verify = True,
        cert: Cert | None = None,
    ) -> None:
        _check(timeout, retries)
        headers = _headers(api_key)
        context = tls_context(verify, cert)
        self.timeout = timeout
        self.retries = retries
        self._urls = _urls(base_url)
        self._https = [
            httpx.Client(
                base_url=url,
                timeout=timeout,
                limits=_limits(max_connections),
                transport=transport,
                headers=headers,
                verify=context,
            )
            for url in self._urls
        ]
        self._current = 0

    def allocate(self, size: int | None = None, namespace: str | None = None) -> AllocatedRange:
        body = _request_body(size, namespace)
        attempts = _Attempts(self, self._urls, self.retries, self.timeout)
        try:
            for attempt in stamina.retry_context(
                on=attempts.backoff,
                attempts=attempts.retries + 1,
                timeout=attempts.timeout,
                wait_initial=WAIT_INITIAL,
                wait_max=WAIT_MAX,
                wait_jitter=WAIT_JITTER,
            ):
                with attempt:
                    http = self._https[attempts.index]
                    response = http.post("/allocate", json=body, timeout=attempts.attempt_timeout())
                    return _allocated(response)
        except Exception as error:
            attempts.explain(error)
            raise
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
    """Asynchronous client, for asyncio and AnyIO programs; arguments as in ``KeygenClient``."""

    def __init__(
        self,
        base_url: str | Sequence[str] = DEFAULT_URL,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        transport: httpx.AsyncBaseTransport | None = None,
        api_key: str | None = None,
        verify: Verify = True,
        cert: Cert | None = None,
    ) -> None:
        _check(timeout, retries)
        headers = _headers(api_key)
        context = tls_context(verify, cert)
        self.timeout = timeout
        self.retries = retries
        self._urls = _urls(base_url)
        self._https = [
            httpx.AsyncClient(
                base_url=url,
                timeout=timeout,
                limits=_limits(max_connections),
                transport=transport,
                headers=headers,
                verify=context,
            )
            for url in self._urls
        ]
        self._current = 0

    async def allocate(
        self, size: int | None = None, namespace: str | None = None
    ) -> AllocatedRange:
        body = _request_body(size, namespace)
        attempts = _Attempts(self, self._urls, self.retries, self.timeout)
        try:
            async for attempt in stamina.retry_context(
                on=attempts.backoff,
                attempts=attempts.retries + 1,
                timeout=attempts.timeout,
                wait_initial=WAIT_INITIAL,
                wait_max=WAIT_MAX,
                wait_jitter=WAIT_JITTER,
            ):
                with attempt:
                    http = self._https[attempts.index]
                    response = await http.post(
                        "/allocate", json=body, timeout=attempts.attempt_timeout()
                    )
                    return _allocated(response)
        except Exception as error:
            attempts.explain(error)
            raise
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


def __getattr__(name: str) -> Any:
    """``keygen.client.IdPool`` and ``AsyncIdPool``, from ``keygen/pool.py`` (built on the
    clients above, so imported when first asked for: no import cycle)."""
    if name in ("IdPool", "AsyncIdPool", "PoolExhausted", "PoolRange"):
        from keygen import pool

        return getattr(pool, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
