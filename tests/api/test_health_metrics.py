"""GET /health and GET /metrics: the documented shapes, with real counters."""

from __future__ import annotations

import httpx
import pytest

from keygen.api.allocate import AllocateEndpoint

pytestmark = pytest.mark.anyio


async def test_health_shape_and_counts(client: httpx.AsyncClient) -> None:
    """/health has the documented fields and counts the allocations made."""
    for _ in range(3):
        await client.post("/allocate", json={"size": 10})
    await client.post("/allocate", json={"size": 0})  # rejected: not an allocation attempt
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["redis_health"] == "not_configured"
    assert body["postgresql_health"] == "not_configured"
    assert body["active_locks"] == 0
    metrics = body["metrics"]
    assert metrics["total_allocations"] == 3
    assert metrics["redis_allocations"] == 0 and metrics["postgresql_allocations"] == 0
    assert metrics["failed_allocations"] == 0
    assert metrics["ids_allocated"] == 30
    assert metrics["avg_allocation_time_ms"] > 0
    assert metrics["p95_allocation_time_ms"] >= 0
    assert body["layers"][0]["source"] == "sqlite"
    assert body["layers"][0]["breaker"] == "closed"


async def test_health_is_503_when_nothing_can_allocate(
    app: AllocateEndpoint, client: httpx.AsyncClient
) -> None:
    """With the ledger closed, /health says unhealthy with HTTP 503."""
    await app.api.state.service.ledger.aclose()
    app.api.state.service.health.max_age = 0  # ask again now rather than at the next probe
    response = await client.get("/health")
    assert response.status_code == 503
    assert response.json()["status"] == "unhealthy"
    assert response.json()["layers"][0]["error"]


async def test_health_answers_when_a_ping_raises_an_untranslated_error(
    app: AllocateEndpoint, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A driver error no layer translates (uvloop's RuntimeError on a reset connection)
    makes the layer unhealthy; /health still answers with its JSON, not a 500."""
    layer = app.api.state.service.allocator.layers[0]

    async def ping() -> None:
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")

    monkeypatch.setattr(layer.dispenser, "ping", ping)
    app.api.state.service.health.max_age = 0  # ask again now rather than at the next probe
    response = await client.get("/health")
    assert response.status_code == 503
    assert response.json()["status"] == "unhealthy"
    assert response.json()["layers"][0]["error"].startswith("RuntimeError: unable to perform")


async def test_metrics_json_shape(client: httpx.AsyncClient) -> None:
    """/metrics defaults to the original description's JSON shape."""
    await client.post("/allocate", json={"size": 5})
    body = (await client.get("/metrics")).json()
    assert body["overall_health"] == "healthy"
    assert set(body) >= {
        "overall_health",
        "redis_health",
        "postgresql_health",
        "active_locks",
        "metrics",
    }
    assert body["metrics"]["total_allocations"] == 1
    assert body["metrics"]["allocations_by_source"] == {"sqlite": 1}


@pytest.mark.parametrize(
    "accept",
    [
        "text/plain",
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    ],
)
async def test_metrics_prometheus_format(client: httpx.AsyncClient, accept: str) -> None:
    """A Prometheus scraper's Accept header gets the text exposition with our counters."""
    await client.post("/allocate", json={"size": 5})
    response = await client.get("/metrics", headers={"accept": accept})
    assert response.status_code == 200
    text = response.text
    assert 'keygen_allocations_total{outcome="success",source="sqlite"} 1.0' in text
    assert "keygen_allocation_duration_seconds_bucket" in text
    assert "keygen_active_locks 0.0" in text
    assert 'keygen_breaker_open{source="sqlite"} 0.0' in text


async def test_the_orchestrator_probes_show_status_only(
    app: AllocateEndpoint, client: httpx.AsyncClient
) -> None:
    """/health/live is 200; /health/ready is 200 while a layer serves and 503 when none can,
    and neither shows anything but the status (and, when not ready, why, by layer names)."""
    assert (await client.get("/health/live")).json() == {"status": "alive"}
    ready = await client.get("/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"status": "healthy"})
    await app.api.state.service.ledger.aclose()
    app.api.state.service.health.max_age = 0  # ask again now rather than at the next probe
    refused = await client.get("/health/ready")
    assert (refused.status_code, refused.json()["status"]) == (503, "unhealthy")
    assert refused.json()["reasons"] == ["no_layer: no layer can allocate (sqlite)"]
