"""Bad input: a clear JSON error with the right 4xx, never a 500, and nothing allocated."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import pytest

from keygen.api import create_app
from keygen.config import Settings
from keygen.constants import MAX_ID
from keygen.errors import LayerUnavailable
from tests.support.app import running

pytestmark = pytest.mark.anyio

JSON = {"content-type": "application/json"}

# (case, method, path, body, headers, expected status, expected code)
CASES: list[tuple[str, str, str, bytes | None, Mapping[str, str], int, str]] = [
    ("truncated JSON", "POST", "/allocate", b'{"size": 10', JSON, 400, "malformed_json"),
    ("not JSON", "POST", "/allocate", b"size=10", JSON, 400, "malformed_json"),
    ("invalid UTF-8", "POST", "/allocate", b"\xff\xfe{}", JSON, 400, "malformed_json"),
    ("unknown path", "GET", "/nope", None, {}, 404, "not_found"),
    ("GET /allocate", "GET", "/allocate", None, {}, 405, "method_not_allowed"),
    ("PUT /allocate", "PUT", "/allocate", b"{}", JSON, 405, "method_not_allowed"),
    ("POST /health", "POST", "/health", b"{}", JSON, 405, "method_not_allowed"),
    (
        "body over limit",
        "POST",
        "/allocate",
        b'{"size": 1' + b" " * 5000 + b"}",
        JSON,
        413,
        "payload_too_large",
    ),
    (
        "form content type",
        "POST",
        "/allocate",
        b"size=1",
        {"content-type": "application/x-www-form-urlencoded"},
        415,
        "unsupported_media_type",
    ),
    (
        "text content type",
        "POST",
        "/allocate",
        b'{"size": 1}',
        {"content-type": "text/plain"},
        415,
        "unsupported_media_type",
    ),
    (
        "body without content type",
        "POST",
        "/allocate",
        b'{"size": 1}',
        {},
        415,
        "unsupported_media_type",
    ),
    ("size zero", "POST", "/allocate", b'{"size": 0}', JSON, 422, "invalid_request"),
    ("size negative", "POST", "/allocate", b'{"size": -5}', JSON, 422, "invalid_request"),
    ("size over max", "POST", "/allocate", b'{"size": 1000001}', JSON, 422, "invalid_request"),
    (
        "size huge",
        "POST",
        "/allocate",
        b'{"size": 100000000000000000000000}',
        JSON,
        422,
        "invalid_request",
    ),
    ("size string", "POST", "/allocate", b'{"size": "10"}', JSON, 422, "invalid_request"),
    # 10.0 is an integer to JSON Schema, and served; a fraction is not.
    ("size fraction", "POST", "/allocate", b'{"size": 10.5}', JSON, 422, "invalid_request"),
    ("size bool", "POST", "/allocate", b'{"size": true}', JSON, 422, "invalid_request"),
    ("array body", "POST", "/allocate", b"[1, 2]", JSON, 422, "invalid_request"),
    ("null body", "POST", "/allocate", b"null", JSON, 422, "invalid_request"),
    ("unknown field", "POST", "/allocate", b'{"sise": 10}', JSON, 422, "invalid_request"),
    (
        "namespace uppercase",
        "POST",
        "/allocate",
        b'{"namespace": "Orders"}',
        JSON,
        422,
        "invalid_request",
    ),
    ("namespace empty", "POST", "/allocate", b'{"namespace": ""}', JSON, 422, "invalid_request"),
    (
        "namespace too long",
        "POST",
        "/allocate",
        b'{"namespace": "' + b"a" * 65 + b'"}',
        JSON,
        422,
        "invalid_request",
    ),
    (
        "namespace leading dot",
        "POST",
        "/allocate",
        b'{"namespace": ".x"}',
        JSON,
        422,
        "invalid_request",
    ),
    ("namespace number", "POST", "/allocate", b'{"namespace": 7}', JSON, 422, "invalid_request"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "code"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_bad_input_gets_clear_error_and_allocates_nothing(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    body: bytes | None,
    headers: Mapping[str, str],
    status: int,
    code: str,
) -> None:
    """Each kind of bad request gets its status and code in the one error shape, and the
    next good request starts right where it would have without it."""
    before = (await client.post("/allocate", json={"size": 1})).json()
    response = await client.request(method, path, content=body, headers=dict(headers))
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    if status == 405:
        assert response.headers["allow"]
    after = (await client.post("/allocate", json={"size": 1})).json()
    assert after["start"] == before["end"] + 1


async def test_namespace_near_max_id_is_refused_not_wrapped(settings: Settings) -> None:
    """A request that would pass 2**63-1 gets 409 namespace_exhausted; a fitting one works."""
    app = create_app(settings.model_copy(update={"lease_size": 100}))
    async with running(app) as http:
        await app.api.state.service.ledger.advance_to("edge", MAX_ID - 10)
        refused = await http.post("/allocate", json={"size": 11, "namespace": "edge"})
        served = await http.post("/allocate", json={"size": 10, "namespace": "edge"})
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "namespace_exhausted"
    assert served.status_code == 200
    assert served.json()["end"] == MAX_ID


async def test_no_layer_gives_503_with_retry_after(settings: Settings) -> None:
    """When the only layer fails, the client gets 503, Retry-After and the error shape."""
    app = create_app(settings.model_copy(update={"breaker_failure_threshold": 1}))
    async with running(app) as http:
        service = app.api.state.service

        async def down(namespace: str, size: int) -> Any:
            raise LayerUnavailable("ledger is down")

        service.allocator.layers[0].dispenser.allocate = down
        response = await http.post("/allocate", json={"size": 1})
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["error"]["code"] == "service_unavailable"


async def test_allocate_before_the_service_runs_is_a_503(settings: Settings) -> None:
    """An app whose lifespan has not started (or has stopped) answers POST /allocate with a
    JSON 503 and Retry-After, not a 404 or a 500."""
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://keygen") as http:
        response = await http.post("/allocate", json={"size": 1})
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "service_unavailable"
