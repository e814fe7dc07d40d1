"""An Alertmanager-style webhook receiver for end-to-end tests: an HTTP server on 127.0.0.1,
in a thread, that records the JSON body of every POST it is sent.

``WebhookReceiver(fail_first=n)`` answers the first ``n`` POSTs with a 503 (recorded too, as
refused), so a test can see the sender retry.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = ["Delivery", "WebhookReceiver"]


@dataclass(frozen=True)
class Delivery:
    """One POST the receiver got."""

    path: str
    content_type: str
    body: Any  # the decoded JSON (None when the body was not JSON)
    accepted: bool  # False: answered 503 (one of the first ``fail_first``)
    at: float  # time.monotonic() when it arrived

    @property
    def alertnames(self) -> list[str]:
        if not isinstance(self.body, dict):
            return []
        return [str(a.get("labels", {}).get("alertname")) for a in self.body.get("alerts", [])]


class WebhookReceiver:
    """Records every POST; use as a context manager (or ``start``/``stop``)."""

    def __init__(self, *, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self._lock = threading.Lock()
        self._deliveries: list[Delivery] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                accepted = receiver._record(self.path, self.headers.get("Content-Type", ""), body)
                self.send_response(200 if accepted else 503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the test says what it saw

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="webhook-receiver", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/alerts"

    def _record(self, path: str, content_type: str, body: Any) -> bool:
        with self._lock:
            accepted = len(self._deliveries) >= self.fail_first
            self._deliveries.append(Delivery(path, content_type, body, accepted, time.monotonic()))
            return accepted

    @property
    def deliveries(self) -> list[Delivery]:
        """Every POST so far, refused ones included, in arrival order."""
        with self._lock:
            return list(self._deliveries)

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The bodies of the POSTs answered 200, in arrival order."""
        return [d.body for d in self.deliveries if d.accepted and isinstance(d.body, dict)]

    def find(
        self,
        alertname: str,
        status: str,
        labels: dict[str, str] | None = None,
        *,
        after: float | None = None,
    ) -> dict[str, Any] | None:
        """The first accepted message with ``status`` about ``alertname`` (and ``labels``),
        received after ``after`` (a ``time.monotonic()``) if given."""
        for delivery in self.deliveries:
            message = delivery.body
            if not delivery.accepted or not isinstance(message, dict):
                continue
            if after is not None and delivery.at < after:
                continue
            if message.get("status") != status:
                continue
            for alert in message.get("alerts", []):
                got = alert.get("labels", {})
                if got.get("alertname") == alertname and all(
                    got.get(k) == v for k, v in (labels or {}).items()
                ):
                    return message
        return None

    async def wait_for(
        self,
        alertname: str,
        status: str,
        *,
        labels: dict[str, str] | None = None,
        after: float | None = None,
        timeout: float = 20.0,
    ) -> dict[str, Any]:
        """Wait until a ``status`` message about ``alertname`` has arrived (after ``after``);
        on the deadline, fail saying what did arrive."""
        deadline = time.monotonic() + timeout
        while (found := self.find(alertname, status, labels, after=after)) is None:
            if time.monotonic() > deadline:
                seen = [
                    (d.body.get("status"), d.alertnames, d.accepted)
                    for d in self.deliveries
                    if isinstance(d.body, dict)
                ]
                raise AssertionError(
                    f"no {status!r} webhook message for {alertname} {labels or ''} in "
                    f"{timeout:g}s; received (status, alertnames, accepted): {seen}"
                )
            await asyncio.sleep(0.05)
        return found

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
