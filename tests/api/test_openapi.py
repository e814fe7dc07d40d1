"""The OpenAPI schema documents POST /allocate as the hot path enforces it."""

from __future__ import annotations

import httpx
import pytest

from keygen.api.allocate import AllocateRequest as WireRequest
from keygen.api.schemas import AllocateRequest

pytestmark = pytest.mark.anyio


async def test_allocate_is_documented(client: httpx.AsyncClient) -> None:
    """/openapi.json has POST /allocate with its request, response and error statuses."""
    schema = (await client.get("/openapi.json")).json()
    operation = schema["paths"]["/allocate"]["post"]
    assert set(operation["responses"]) >= {"200", "400", "413", "415", "422", "503"}
    assert "AllocateRequest" in schema["components"]["schemas"]
    assert (await client.get("/docs")).status_code == 200


def test_documented_models_match_the_wire_structs() -> None:
    """The pydantic model in the docs has exactly the fields msgspec reads."""
    assert set(AllocateRequest.model_fields) == set(WireRequest.__struct_fields__)


async def test_documented_responses_are_what_the_server_writes(
    client: httpx.AsyncClient,
) -> None:
    """The 200 and error schemas name exactly the fields of real responses."""
    components = (await client.get("/openapi.json")).json()["components"]["schemas"]
    allocated = (await client.post("/allocate", json={"size": 3})).json()
    assert set(components["AllocatedRange"]["required"]) == set(allocated)
    assert allocated["source"] in components["AllocatedRange"]["properties"]["source"]["enum"]
    error = (await client.post("/allocate", json={"size": 0})).json()
    assert set(components["ErrorResponse"]["required"]) == set(error)
    assert set(components["ErrorDetail"]["required"]) == set(error["error"])


async def test_the_bearer_scheme_is_documented(client: httpx.AsyncClient) -> None:
    """API keys are a bearer scheme, optional everywhere (KEYGEN_AUTH may not require them)
    and never asked of the orchestrators' probes; the refusals they cause are documented."""
    schema = (await client.get("/openapi.json")).json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert schema["security"] == [{"bearer": []}, {}]
    assert schema["paths"]["/health/live"]["get"]["security"] == []
    assert schema["paths"]["/health/ready"]["get"]["security"] == []
    assert set(schema["paths"]["/allocate"]["post"]["responses"]) >= {"401", "403", "429"}
