"""``GET /health`` and ``GET /metrics``."""

from __future__ import annotations

from typing import Annotated

import msgspec
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client.exposition import choose_encoder

from keygen.metrics import registry_of
from keygen.service import Keygen
from keygen.snapshots import UNHEALTHY, MetricsDocument

router = APIRouter()


def get_service(request: Request) -> Keygen:
    service: Keygen = request.app.state.service
    return service


ServiceDep = Annotated[Keygen, Depends(get_service)]


@router.get("/health", summary="Health of the service and of each layer")
async def health(service: ServiceDep) -> Response:
    """200 while some layer can allocate, 503 when none can. Every layer is pinged now."""
    snapshot = await service.health.live()
    status = 503 if snapshot.status == UNHEALTHY else 200
    return Response(msgspec.json.encode(snapshot), status, media_type="application/json")


@router.get(
    "/metrics",
    summary="Counters as JSON, or in the Prometheus text format when asked for it",
    responses={200: {"content": {"text/plain": {}, "application/openmetrics-text": {}}}},
)
async def metrics(request: Request, service: ServiceDep) -> Response:
    """JSON by default; the Prometheus or OpenMetrics exposition for ``Accept: text/plain``
    or ``application/openmetrics-text`` (what a Prometheus scraper sends). The layers' health
    is the last one asked, at most ``KEYGEN_HEALTH_MAX_AGE`` old: a scrape pings nothing."""
    snapshot = await service.health.recent()
    accept = request.headers.get("accept", "")
    if "text/plain" in accept or "openmetrics" in accept:
        encoder, content_type = choose_encoder(accept)
        return Response(encoder(registry_of(snapshot, service.metrics)), media_type=content_type)
    body = msgspec.json.encode(MetricsDocument.of(snapshot))
    return Response(body, media_type="application/json")
