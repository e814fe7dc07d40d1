"""The OpenAPI schema documents POST /allocate as the hot path enforces it."""

from __future__ import annotations

import httpx
import pytest

from keygen.api.allocate import AllocateRequest as WireRequest
from keygen.api.allocate import AllocationBody
from keygen.api.schemas import AllocateRequest, Allocation

pytestmark = pytest.mark.anyio


async def test_allocate_is_documented(client: httpx.AsyncClient) -> None:
    """/openapi.json has POST /allocate with its request, response and error statuses."""
    schema = (await client.get("/openapi.json")).json()
    operation = schema["paths"]["/allocate"]["post"]
    assert set(operation["responses"]) >= {"200", "400", "413", "415", "422", "503"}
    assert "AllocateRequest" in schema["components"]["schemas"]
    assert (await client.get("/docs")).status_code == 200


def test_documented_models_match_the_wire_structs() -> None:
    """The pydantic models in the docs have exactly the fields msgspec reads and writes."""
    assert set(AllocateRequest.model_fields) == set(WireRequest.__struct_fields__)
    assert set(Allocation.model_fields) == set(AllocationBody.__struct_fields__)
