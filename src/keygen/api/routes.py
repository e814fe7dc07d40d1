"""``GET /health`` and ``GET /metrics``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from keygen.service import UNHEALTHY, Keygen

router = APIRouter()


def get_service(request: Request) -> Keygen:
    service: Keygen = request.app.state.service
    return service


def get_registry(request: Request) -> CollectorRegistry:
    registry: CollectorRegistry = request.app.state.registry
    return registry


ServiceDep = Annotated[Keygen, Depends(get_service)]
RegistryDep = Annotated[CollectorRegistry, Depends(get_registry)]


@router.get("/health", summary="Health of the service and of each layer")
async def health(service: ServiceDep) -> JSONResponse:
    """200 while some layer can allocate, 503 when none can."""
    document = await service.health()
    return JSONResponse(document, status_code=503 if document["status"] == UNHEALTHY else 200)


@router.get(
    "/metrics",
    summary="Counters as JSON, or in the Prometheus text format when asked for it",
    responses={200: {"content": {"text/plain": {}, "application/openmetrics-text": {}}}},
)
async def metrics(request: Request, service: ServiceDep, registry: RegistryDep) -> Response:
    """JSON by default; the Prometheus or OpenMetrics exposition for ``Accept: text/plain``
    or ``application/openmetrics-text`` (what a Prometheus scraper sends)."""
    accept = request.headers.get("accept", "")
    if "text/plain" in accept or "openmetrics" in accept:
        encoder, content_type = choose_encoder(accept)
        return Response(encoder(registry), media_type=content_type)
    document = await service.health()
    body: dict[str, Any] = {
        "overall_health": document["status"],
        "redis_health": document["redis_health"],
        "postgresql_health": document["postgresql_health"],
        "active_locks": document["active_locks"],
        "metrics": document["metrics"],
    }
    return JSONResponse(body)
