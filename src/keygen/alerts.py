"""The alert rules, defined once, and rendered twice: as Prometheus alerting rules
(``deploy/prometheus/alerts.yml``, written by ``keygen alerts rules``) and evaluated in the
service every second over the instance's figures (``GET /alerts``, a log line on every
transition, and an Alertmanager-style webhook with ``KEYGEN_ALERT_WEBHOOK_URL``).

Each rule names its Prometheus expression and the same measure computed in-process; the
threshold, the window and the ``for`` duration are the rule's, used by both.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import httpx
import msgspec
import stamina

from keygen.constants import MAX_ID
from keygen.histogram import quantile
from keygen.metrics import InstanceView
from keygen.metrics.counters import InstanceCounters
from keygen.metrics.layout import LATENCY_BUCKETS
from keygen.snapshots import AlertsDocument, AlertSnapshot, AlertState

__all__ = ["RULES", "Alerts", "Rule", "prometheus_rules"]

log = logging.getLogger(__name__)

RUNBOOK: Final = "docs/monitoring.md#"
HEADROOM_LOW: Final = MAX_ID // 100  # 1 % of the ID space
ALLOCATE_ENDPOINT: Final = "/allocate"  # its label in keygen_http_responses_total


@dataclass(frozen=True)
class Sample:
    """The cumulative figures a windowed rule takes differences of."""

    at: float
    requests: int  # POST /allocate answered, but for the client's refusals (4xx)
    failed: int  # of them, the service's failures (5xx)
    buckets: tuple[int, ...]
    failovers: int


@dataclass(frozen=True)
class Window:
    """What a rule measures over: the instance now, and the samples back to the longest
    window of any rule."""

    view: InstanceView
    now: Sample
    samples: deque[Sample]

    def before(self, seconds: float) -> Sample:
        """The oldest sample within ``seconds`` of now (the first one, early on)."""
        for sample in self.samples:
            if self.now.at - sample.at <= seconds + 0.5:
                return sample
        return self.now


Measure = Callable[[Window, float], dict[str, float | None]]


def _latency_p95(w: Window, window: float) -> dict[str, float | None]:
    before = w.before(window)
    buckets = [a - b for a, b in zip(w.now.buckets, before.buckets, strict=True)]
    return {"": quantile(0.95, LATENCY_BUCKETS, buckets)}


def _error_rate(w: Window, window: float) -> dict[str, float | None]:
    before = w.before(window)
    requests = w.now.requests - before.requests
    return {"": (w.now.failed - before.failed) / requests if requests else None}


def _allocate_outcomes(counters: InstanceCounters) -> tuple[int, int]:
    """The POST /allocate responses that were not a client's refusal (4xx), and of them the
    service's failures (5xx), as KeygenErrorRateHigh's PromQL selects them."""
    requests = failed = 0
    for (endpoint, status), count in counters.responses().items():
        if endpoint != ALLOCATE_ENDPOINT or status.startswith("4"):
            continue
        requests += count
        if status.startswith("5"):
            failed += count
    return requests, failed


def _failovers(w: Window, window: float) -> dict[str, float | None]:
    return {"": float(w.now.failovers - w.before(window).failovers)}


def _locks(w: Window, window: float) -> dict[str, float | None]:
    return {"": float(w.view.active_locks())}


def _layers(w: Window, window: float) -> dict[str, float | None]:
    return {source: float(up) for source, up in w.view.layer_up().items()}


def _reserve_serving(w: Window, window: float) -> dict[str, float | None]:
    serving = w.view.reserve_serving()
    return {"": None if serving is None else float(serving)}


def _reserve_left(w: Window, window: float) -> dict[str, float | None]:
    return {ns: figures.seconds_left for ns, figures in w.view.reserve().items()}


def _audit(w: Window, window: float) -> dict[str, float | None]:
    return {"": float(w.view.audit_violations())}


def _headroom(w: Window, window: float) -> dict[str, float | None]:
    return {ns: float(left) for ns, left in w.view.headroom().items()}


@dataclass(frozen=True)
class Rule:
    name: str
    severity: str
    summary: str
    #: PromQL whose value is compared with the threshold (``{threshold}`` and ``{window}``
    #: are filled in).
    expr: str
    above: bool  # fires above the threshold (else below it)
    threshold: float
    for_seconds: float
    measure: Measure
    window: float = 0.0  # seconds the measure looks back
    label: str | None = None  # evaluated per value of this label

    def breached(self, value: float | None) -> bool:
        if value is None or math.isnan(value):
            return False
        return value > self.threshold if self.above else value < self.threshold


RULES: Final = (
    Rule(
        "KeygenLatencyHigh",
        "warning",
        "Allocation p95 latency above 10 ms",
        "histogram_quantile(0.95, sum by (instance, le) "
        "(rate(keygen_allocation_duration_seconds_bucket[{window}]))) > {threshold}",
        True,
        0.010,
        300,
        _latency_p95,
        window=60,
    ),
    Rule(
        "KeygenErrorRateHigh",
        "critical",
        "More than 1 % of allocation requests fail with a 5xx",
        # The service's own failures only: a client's refusals (4xx, such as 409
        # too_many_namespaces or 429) neither fire it nor dilute it.
        "sum by (instance) (rate(keygen_http_responses_total"
        '{{endpoint="/allocate", status=~"5.."}}[{window}])) '
        "/ sum by (instance) (rate(keygen_http_responses_total"
        '{{endpoint="/allocate", status!~"4.."}}[{window}])) > {threshold}',
        True,
        0.01,
        60,
        _error_rate,
        window=60,
    ),
    Rule(
        "KeygenTooManyLocks",
        "warning",
        "More than 10 distributed locks held",
        "sum by (instance) (keygen_active_locks) > {threshold}",
        True,
        10,
        0,
        _locks,
    ),
    Rule(
        "KeygenRedisFailover",
        "warning",
        "The Redis master failed over",
        "increase(keygen_redis_failovers_total[{window}]) > {threshold}",
        True,
        0,
        0,
        _failovers,
        window=300,
    ),
    Rule(
        "KeygenLayerDown",
        "critical",
        "A layer fails its probes",
        "min by (instance, source) (keygen_layer_up) < {threshold}",
        False,
        1,
        30,
        _layers,
        label="source",
    ),
    Rule(
        "KeygenServingFromReserve",
        "critical",
        "Requests are served from the emergency reserve",
        "max by (instance) (keygen_reserve_serving) > {threshold}",
        True,
        0,
        0,
        _reserve_serving,
    ),
    Rule(
        "KeygenReserveLow",
        "critical",
        "The emergency reserve lasts less than 10 minutes",
        "min by (instance, namespace) (keygen_reserve_remaining_seconds) < {threshold}",
        False,
        600,
        0,
        _reserve_left,
        label="namespace",
    ),
    Rule(
        "KeygenHeadroomLow",
        "warning",
        "A namespace has less than 1 % of its IDs left",
        "min by (namespace) (keygen_ledger_headroom_ids) < {threshold}",
        False,
        HEADROOM_LOW,
        0,
        _headroom,
        label="namespace",
    ),
    Rule(
        "KeygenAuditViolation",
        "critical",
        "The ledger's audit trail holds what must never be there",
        "sum by (instance) (keygen_audit_violations_total) > {threshold}",
        True,
        0,
        0,
        _audit,
    ),
)


def _duration(seconds: float) -> str:
    seconds = max(1, round(seconds))
    return f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def prometheus_rules(rules: tuple[Rule, ...] = RULES) -> str:
    """The rules as a Prometheus rule file (``deploy/prometheus/alerts.yml``)."""
    lines = [
        "# Generated by `keygen alerts rules` from src/keygen/alerts.py: edit the rules there.",
        "groups:",
        "  - name: keygen",
        "    rules:",
    ]
    for rule in rules:
        expr = rule.expr.format(window=_duration(rule.window), threshold=_number(rule.threshold))
        lines += [
            f"      - alert: {rule.name}",
            f"        expr: {_quoted(expr)}",
        ]
        if rule.for_seconds:
            lines.append(f"        for: {_duration(rule.for_seconds)}")
        lines += [
            "        labels:",
            f"          severity: {rule.severity}",
            "        annotations:",
            f"          summary: {_quoted(rule.summary)}",
            f"          runbook: {_quoted(RUNBOOK + rule.name.lower())}",
        ]
    return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass
class _Alert:
    rule: Rule
    labels: dict[str, str]
    state: AlertState = "inactive"
    since: float | None = None
    value: float | None = None

    def snapshot(self) -> AlertSnapshot:
        return AlertSnapshot(
            name=self.rule.name,
            severity=self.rule.severity,
            state=self.state,
            since=self.since,
            value=self.value,
            threshold=self.rule.threshold,
            labels=self.labels,
            summary=self.rule.summary,
            runbook=RUNBOOK + self.rule.name.lower(),
        )


class Alerts:
    """Evaluates the rules over the instance every second; says so on every transition.

    ``scale`` multiplies every window and ``for`` duration (tests make them short).
    """

    def __init__(
        self,
        *,
        instance_id: str,
        webhook_url: str | None = None,
        scale: float = 1.0,
        rules: tuple[Rule, ...] = RULES,
    ) -> None:
        self.instance_id = instance_id
        self.scale = scale
        self.rules = rules
        self.evaluated_at: float | None = None
        self._alerts: dict[tuple[str, str], _Alert] = {}
        self._samples: deque[Sample] = deque()
        self._keep = scale * max(rule.window for rule in rules) + 5
        self._webhook = _Webhook(webhook_url) if webhook_url else None

    def evaluate(self, view: InstanceView, at: float) -> AlertsDocument:
        c = view.counters
        requests, failed = _allocate_outcomes(c)
        now = Sample(
            at,
            requests,
            failed,
            tuple(c.bucket_counts),
            view.failovers() or 0,
        )
        self._samples.append(now)
        while self._samples and at - self._samples[0].at > self._keep:
            self._samples.popleft()
        window = Window(view, now, self._samples)
        for rule in self.rules:
            values = rule.measure(window, rule.window * self.scale)
            for key in [k for k in self._alerts if k[0] == rule.name and k[1] not in values]:
                self._step(self._alerts[key], None, at)  # the label is gone: it resolves
            for label, value in values.items():
                alert = self._alerts.get((rule.name, label))
                if alert is None:
                    labels = {rule.label: label} if rule.label else {}
                    alert = self._alerts[(rule.name, label)] = _Alert(rule, labels)
                self._step(alert, value, at)
        self.evaluated_at = at
        return self.document()

    def _step(self, alert: _Alert, value: float | None, at: float) -> None:
        alert.value = value
        rule = alert.rule
        was, since = alert.state, alert.since
        if not rule.breached(value):
            alert.state, alert.since = "inactive", None
        elif was == "inactive":
            alert.state, alert.since = "pending", at
        if alert.state == "pending" and at - (alert.since or at) >= rule.for_seconds * self.scale:
            alert.state = "firing"
        if alert.state != was:
            log.log(
                logging.WARNING if alert.state == "firing" else logging.INFO,
                "alert %s%s: %s -> %s (value %s, threshold %s)",
                rule.name,
                "".join(f" {k}={v}" for k, v in alert.labels.items()),
                was,
                alert.state,
                value,
                _number(rule.threshold),
            )
            if self._webhook is not None and "firing" in (was, alert.state):
                resolved = was == "firing"
                self._webhook.send(self._payload(alert, since or at, resolved=resolved))

    def document(self) -> AlertsDocument:
        """Every rule: its alerts per label, or one inactive entry when it has none."""
        shown = []
        for rule in self.rules:
            mine = [a for (name, _), a in sorted(self._alerts.items()) if name == rule.name]
            active = [a for a in mine if a.state != "inactive"]
            shown += [a.snapshot() for a in active] or [
                _Alert(rule, {}, value=mine[0].value if len(mine) == 1 else None).snapshot()
            ]
        return AlertsDocument(self.evaluated_at, shown)

    def _payload(self, alert: _Alert, since: float, *, resolved: bool) -> dict[str, Any]:
        """Alertmanager's webhook format (version 4), one alert per message."""
        labels = {
            "alertname": alert.rule.name,
            "severity": alert.rule.severity,
            "instance": self.instance_id,
            **alert.labels,
        }
        annotations = {"summary": alert.rule.summary, "runbook": RUNBOOK + alert.rule.name.lower()}
        status = "resolved" if resolved else "firing"
        now = _iso(time.time())
        return {
            "version": "4",
            "groupKey": f'{{}}:{{alertname="{alert.rule.name}"}}',
            "status": status,
            "receiver": "keygen",
            "truncatedAlerts": 0,
            "groupLabels": {"alertname": alert.rule.name},
            "commonLabels": labels,
            "commonAnnotations": annotations,
            "externalURL": "",
            "alerts": [
                {
                    "status": status,
                    "labels": labels,
                    "annotations": annotations,
                    "startsAt": _iso(since),  # a resolution keeps its start, as Alertmanager does
                    "endsAt": now if resolved else "0001-01-01T00:00:00Z",
                    "generatorURL": "",
                    # Stable per label set, as Alertmanager's: receivers pair the messages by it.
                    "fingerprint": hashlib.sha256(
                        msgspec.json.encode(sorted(labels.items()))
                    ).hexdigest()[:16],
                }
            ],
        }

    async def aclose(self) -> None:
        if self._webhook is not None:
            await self._webhook.aclose()


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


class _Webhook:
    """POSTs each message in order, in the background, retried with backoff; a message that
    still fails after the retries is logged and dropped. Requests never wait for it."""

    ATTEMPTS: Final = 5
    QUEUE: Final = 1000

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent = 0
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self.QUEUE)
        self._task: asyncio.Task[None] | None = None

    def send(self, payload: dict[str, Any]) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._deliver())
        try:
            self._queue.put_nowait(payload)
        except asyncio.QueueFull:
            log.error("alert webhook: %d messages waiting; dropping one", self.QUEUE)

    async def _deliver(self) -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                payload = await self._queue.get()
                body = msgspec.json.encode(payload)
                try:
                    async for attempt in stamina.retry_context(
                        on=httpx.HTTPError, attempts=self.ATTEMPTS, timeout=60
                    ):
                        with attempt:
                            response = await client.post(
                                self.url,
                                content=body,
                                headers={"Content-Type": "application/json"},
                            )
                            response.raise_for_status()
                    self.sent += 1
                except httpx.HTTPError as exc:
                    log.error("alert webhook %s failed %d times: %s", self.url, self.ATTEMPTS, exc)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
