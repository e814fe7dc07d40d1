"""``GET /health``, ``GET /metrics`` and the monitoring documents built on them."""

from __future__ import annotations

import math
import time
from typing import Annotated, Final

import msgspec
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from prometheus_client.exposition import choose_encoder

from keygen.errors import InvalidRequest
from keygen.history import MAX_WINDOW
from keygen.metrics import registry_of
from keygen.service import Keygen
from keygen.snapshots import (
    UNHEALTHY,
    LedgerDocument,
    MetricsDocument,
    NamespaceSnapshot,
)

router = APIRouter()

MIN_WINDOW: Final = 10.0
#: Namespaces ``GET /ledger`` lists at most.
LEDGER_NAMESPACES: Final = 100


def get_service(request: Request) -> Keygen:
    service: Keygen = request.app.state.service
    return service


ServiceDep = Annotated[Keygen, Depends(get_service)]


@router.get(
    "/health",
    summary="Health of the service and of each layer",
    responses={503: {"description": "No layer can allocate"}},
)
async def health(service: ServiceDep) -> Response:
    """200 while some layer can allocate, 503 when none can, as the background probe (at
    most ``KEYGEN_HEALTH_MAX_AGE`` ago) found the layers."""
    snapshot = await service.health.recent()
    status = 503 if snapshot.status == UNHEALTHY else 200
    return Response(msgspec.json.encode(snapshot), status, media_type="application/json")


@router.get("/health/live", summary="Whether the process answers (for orchestrators)")
async def live() -> Response:
    """Always 200 while the process serves HTTP; nothing is pinged, nothing internal shown."""
    return _json({"status": "alive"})


@router.get(
    "/health/ready",
    summary="Whether the instance can allocate now (for orchestrators)",
    responses={503: {"description": "No layer can allocate"}},
)
async def ready(service: ServiceDep) -> Response:
    """200 while this worker can serve allocations; 503 with the reasons (no layer answered
    its last background probe, no key table in force, stopping) and a Retry-After when it
    cannot."""
    snapshot = await service.health.recent()
    reasons = service.health.unready(snapshot)
    if not reasons:
        return Response(
            msgspec.json.encode({"status": snapshot.status}), 200, media_type="application/json"
        )
    return Response(
        msgspec.json.encode({"status": UNHEALTHY, "reasons": reasons}),
        503,
        headers={"Retry-After": "1"},
        media_type="application/json",
    )


@router.get(
    "/metrics",
    summary="Counters as JSON, or in the Prometheus text format when asked for it",
    responses={200: {"content": {"text/plain": {}, "application/openmetrics-text": {}}}},
)
async def metrics(request: Request, service: ServiceDep) -> Response:
    """JSON by default; the Prometheus or OpenMetrics exposition for ``Accept: text/plain``
    or ``application/openmetrics-text`` (what a Prometheus scraper sends). The layers' health
    is the last one asked, at most ``KEYGEN_HEALTH_MAX_AGE`` old: a scrape pings nothing."""
    accept = request.headers.get("accept", "")
    if "text/plain" in accept or "openmetrics" in accept:
        encoder, content_type = choose_encoder(accept)
        return Response(encoder(registry_of(service.health.instance())), media_type=content_type)
    snapshot = await service.health.recent()
    return _json(MetricsDocument.of(snapshot))


#: What ``window`` may be, stated in the schema so that it and the server agree.
WINDOW_PATTERN: Final = r"^[0-9]{1,6}(\.[0-9]{1,3})?[smh]?$"


@router.get("/metrics/history", summary="The key figures over time")
async def history(
    service: ServiceDep,
    window: Annotated[
        str,
        Query(
            pattern=WINDOW_PATTERN,
            description="Seconds, or a number with s, m or h; 10 s to 24h (a window outside "
            "is brought to the nearest bound).",
        ),
    ] = "15m",
) -> Response:
    """A point a second up to a window of an hour, a point a minute beyond (up to 24h);
    ``window`` is a number of seconds, or one with ``s``, ``m`` or ``h``."""
    seconds = _window(window)
    return _json(service.history.document(seconds, time.time()))


@router.get("/alerts", summary="Every alert rule, as evaluated in the service")
async def alerts(service: ServiceDep) -> Response:
    return _json(service.probes.alerts_document())


@router.get("/ledger", summary="The ledger's namespaces, the least headroom first")
async def ledger(service: ServiceDep) -> Response:
    statuses = sorted(await service.ledger.status(), key=lambda s: s.headroom)
    namespaces = [
        NamespaceSnapshot(s.namespace, s.next_id, s.headroom, s.grants)
        for s in statuses[:LEDGER_NAMESPACES]
    ]
    return _json(LedgerDocument(service.ledger.name, namespaces))


def _json(document: object) -> Response:
    return Response(msgspec.json.encode(document), media_type="application/json")


_UNITS = {"s": 1, "m": 60, "h": 3600}


def _window(text: str) -> float:
    unit = _UNITS.get(text[-1:], 0)
    number = text[:-1] if unit else text
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        seconds = math.nan
    if math.isfinite(seconds):  # the schema's pattern admits 0 and 999999h: take the bound
        seconds = min(max(seconds, MIN_WINDOW), MAX_WINDOW)
    if not MIN_WINDOW <= seconds <= MAX_WINDOW:
        raise InvalidRequest(
            f"window must be {MIN_WINDOW:g} s to 24h (e.g. 30s, 15m, 1h), got {text[:20]!r}"
        )
    return seconds
