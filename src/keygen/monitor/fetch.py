"""Reading the instances: what the monitor last learnt of each (``Instance``), and
``refresh``, which reads one instance's ``GET /health``, ``/metrics/history`` and ``/alerts``.

httpx and msgspec are imported when an instance is read, not with this module.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeVar

from keygen.constants import DEFAULT_HOST, DEFAULT_PORT

if TYPE_CHECKING:
    import httpx

    from keygen.snapshots import AlertsDocument, HealthSnapshot, HistoryDocument

DEFAULT_URL: Final = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
DEFAULT_INTERVAL: Final = 1.0
#: Per request: a monitor must not wait on one instance while the others go stale.
DEFAULT_TIMEOUT: Final = 2.0
DEFAULT_WINDOW: Final = "5m"

# The exit status of --once (and --frames): the worst instance's.
EXIT_HEALTHY: Final = 0
EXIT_DEGRADED: Final = 1
EXIT_DOWN: Final = 2  # unreachable or unhealthy

_T = TypeVar("_T")


@dataclass
class Instance:
    """What the monitor last learnt of one instance."""

    url: str
    health: HealthSnapshot | None = None
    #: Why there is no health snapshot: the instance is unreachable.
    error: str | None = None
    history: HistoryDocument | None = None
    history_note: str | None = None  # why there is no history
    alerts: AlertsDocument | None = None
    alerts_note: str | None = None
    answered_ms: float | None = None
    answered_at: float | None = None  # the wall clock of the last health snapshot
    #: Allocations per second between the last two answers (shown when there is no history).
    polled_rate: float | None = None
    _last_total: tuple[float, int] | None = None

    @property
    def verdict(self) -> int:
        status = self.health.status if self.health is not None else None
        if status == "healthy":
            return EXIT_HEALTHY
        return EXIT_DEGRADED if status == "degraded" else EXIT_DOWN

    @property
    def state(self) -> str:
        """``healthy``, ``degraded``, ``unhealthy`` or ``unreachable``."""
        return self.health.status if self.health is not None else "unreachable"


@dataclass(frozen=True)
class Options:
    """What ``keygen monitor`` watches, and how (the command line's options)."""

    urls: tuple[str, ...] = (DEFAULT_URL,)
    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    window: str = DEFAULT_WINDOW
    once: bool = False
    frames: int | None = None  # stop after this many refreshes (None: until Ctrl-C)
    #: An API key with the ``read`` scope, for instances that require keys.
    api_key: str | None = None
    #: The CAs (PEM) an ``https://`` instance's certificate is checked against (None: the
    #: system's), and the client certificate and key shown to one that asks (mTLS).
    ca_certs: str | None = None
    client_cert: str | None = None
    client_key: str | None = None


def verdict(instances: Sequence[Instance]) -> int:
    """The exit status for these instances: the worst of theirs."""
    return max((i.verdict for i in instances), default=EXIT_HEALTHY)


async def _get(client: httpx.AsyncClient, url: str, timeout: float) -> httpx.Response:
    # httpx's timeout bounds each phase; this bounds the whole request (a trickling answer).
    async with asyncio.timeout(timeout):
        return await client.get(url)


def _why(outcome: BaseException, timeout: float) -> str:
    import ssl

    import httpx

    from keygen.client import tls_refusal

    if isinstance(outcome, TimeoutError | httpx.TimeoutException):
        return f"no answer in {timeout:g} s"
    if (refusal := tls_refusal(outcome)) is not None:
        if isinstance(refusal, ssl.SSLCertVerificationError):
            return f"TLS: its certificate is not trusted (--ca-certs): {refusal.verify_message}"
        return f"TLS: {str(refusal.reason or refusal).lower().replace('_', ' ')}"
    if isinstance(outcome, httpx.RemoteProtocolError) and _over_https(outcome):
        # What a client sees when a service that requires mTLS refuses its certificate.
        return (
            f"{type(outcome).__name__}: {outcome} (an instance that requires a client "
            "certificate closes the connection of a client without one it trusts: "
            "--client-cert)"
        )
    if isinstance(outcome, httpx.ConnectError):
        # httpx says "All connection attempts failed"; the OSError beneath says why.
        cause: BaseException | None = outcome
        while cause is not None and not (isinstance(cause, OSError) and cause.errno):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, OSError) and cause.errno:
            reason = os.strerror(cause.errno) if cause.errno > 0 else cause.strerror
            return f"cannot connect: {reason}"
        return f"cannot connect: {outcome}"
    if isinstance(outcome, httpx.HTTPError):
        return f"{type(outcome).__name__}: {outcome}"
    raise outcome  # not a network failure: a bug, to be seen


def _over_https(error: httpx.HTTPError) -> bool:
    try:
        return error.request.url.scheme == "https"
    except RuntimeError:  # an error raised without its request
        return False


def _document(
    outcome: httpx.Response | BaseException,
    kind: type[_T],
    path: str,
    timeout: float,
    ok: tuple[int, ...] = (200,),
) -> _T | str:
    """The document ``path`` answered, decoded as ``kind``; or why there is none."""
    import msgspec

    if isinstance(outcome, BaseException):
        return _why(outcome, timeout)
    if outcome.status_code not in ok:
        reason = f"{path} answered HTTP {outcome.status_code}"
        try:
            error = msgspec.json.decode(outcome.content)["error"]
            return f"{reason}: {error['code']}: {error['message']}"
        except (msgspec.DecodeError, KeyError, TypeError):
            return f"{reason} {outcome.reason_phrase}".rstrip()
    try:
        return msgspec.json.decode(outcome.content, type=kind)
    except msgspec.DecodeError as exc:
        if outcome.content.startswith(b'{"status":') and outcome.content.count(b",") == 0:
            # An instance that requires API keys shows the status only without one.
            return f"{path} answered the status only: it needs --api-key (a key with 'read')"
        return f"{path} is not the document expected: {exc}"


async def refresh(client: httpx.AsyncClient, instance: Instance, options: Options) -> None:
    """Read ``instance``'s health, history and alerts; a failure is noted on it, never raised."""
    from keygen.snapshots import AlertsDocument, HealthSnapshot, HistoryDocument

    started = time.monotonic()
    health, history, alerts = await asyncio.gather(
        _get(client, f"{instance.url}/health", options.timeout),
        _get(client, f"{instance.url}/metrics/history?window={options.window}", options.timeout),
        _get(client, f"{instance.url}/alerts", options.timeout),
        return_exceptions=True,
    )
    now = time.monotonic()
    # /health answers 503 while the instance cannot allocate: its body says why.
    snapshot = _document(health, HealthSnapshot, "/health", options.timeout, ok=(200, 503))
    if isinstance(snapshot, str):
        instance.health, instance.error = None, snapshot
        instance.history, instance.alerts = None, None
        instance.history_note = instance.alerts_note = None
        instance.answered_ms = instance.polled_rate = instance._last_total = None
        return
    total = snapshot.metrics.total_allocations
    if instance._last_total is not None and now > instance._last_total[0]:
        last_time, last_total = instance._last_total
        instance.polled_rate = max(0, total - last_total) / (now - last_time)
    instance._last_total = (now, total)
    instance.health, instance.error = snapshot, None
    instance.answered_ms = (now - started) * 1000
    instance.answered_at = time.time()
    found = _document(history, HistoryDocument, "/metrics/history", options.timeout)
    instance.history, instance.history_note = (
        (None, found) if isinstance(found, str) else (found, None)
    )
    fired = _document(alerts, AlertsDocument, "/alerts", options.timeout)
    instance.alerts, instance.alerts_note = (
        (None, fired) if isinstance(fired, str) else (fired, None)
    )
