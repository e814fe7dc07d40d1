"""What the edge refuses before anything is allocated, in-process (raw sockets: e2e)."""

from __future__ import annotations

import json

import httpx
import pytest

from keygen.api import create_app
from keygen.api.allocate import AllocateEndpoint
from keygen.config import Settings
from keygen.constants import DEFAULT_NAMESPACE, NAMESPACE_PATTERN
from keygen.redact import redact_target
from tests.support.app import running

pytestmark = pytest.mark.anyio


async def _next_start(client: httpx.AsyncClient, namespace: str = "default") -> int:
    response = await client.post("/allocate", json={"namespace": namespace, "size": 1})
    start: int = response.json()["start"]
    return start


async def test_namespace_with_a_trailing_newline_is_refused(client: httpx.AsyncClient) -> None:
    """'abc\\n' is not the namespace 'abc', nor one of its own: a 422 (fullmatch, not $)."""
    response = await client.post("/allocate", json={"namespace": "abc\n", "size": 1})
    assert response.status_code == 422
    assert await _next_start(client, "abc") == 1


def test_the_default_namespace_is_one_the_pattern_admits() -> None:
    """A request without a namespace is not matched against the pattern: the default must
    be one it admits."""
    assert NAMESPACE_PATTERN.fullmatch(DEFAULT_NAMESPACE)


@pytest.mark.parametrize("namespace", ["", "-a", "A", "a b", "a\x00", "\u0430", "a" * 65])
async def test_namespaces_outside_the_pattern_are_refused(
    client: httpx.AsyncClient, namespace: str
) -> None:
    """Each namespace the contract refuses gets a 422."""
    response = await client.post("/allocate", json={"namespace": namespace})
    assert response.status_code == 422, namespace


async def test_an_integral_float_size_is_an_integer(client: httpx.AsyncClient) -> None:
    """size 1.0 (an integer to JSON Schema) is served as 1; 1.5 and true are refused."""
    response = await client.post(
        "/allocate", content=b'{"size": 2.0}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 200 and response.json()["size"] == 2
    for body in (b'{"size": 1.5}', b'{"size": true}', b'{"size": 1e400}', b'{"size": -0}'):
        response = await client.post(
            "/allocate", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422, body


async def test_an_empty_post_needs_a_json_content_type(client: httpx.AsyncClient) -> None:
    """No body and no Content-Type (a cross-site form's request) is a 415; with the type,
    the defaults are served."""
    response = await client.post("/allocate")
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"
    form = await client.post("/allocate", data={"size": "1"})
    assert form.status_code == 415
    ok = await client.post("/allocate", headers={"content-type": "application/json"})
    assert ok.status_code == 200


async def test_a_disconnect_before_the_body_ends_allocates_nothing(
    app: AllocateEndpoint,
) -> None:
    """A body cut short by http.disconnect gets no allocation and no response."""
    sent: list[dict[str, object]] = []
    messages: list[dict[str, object]] = [
        {"type": "http.request", "body": b'{"namespace": "cut"}', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, object]:
        return messages.pop(0)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/allocate",
        "headers": [(b"content-type", b"application/json"), (b"host", b"keygen")],
    }
    async with running(app) as http:
        await app(scope, receive, send)  # type: ignore[arg-type]
        assert sent == []
        assert await _next_start(http, "cut") == 1


async def test_health_with_a_trailing_slash_is_a_json_404(client: httpx.AsyncClient) -> None:
    """/health/ is not redirected (the Location would be the client's Host): a JSON 404."""
    response = await client.get("/health/", headers={"host": "evil.example"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_only_allowed_hosts_are_served(settings: Settings) -> None:
    """With KEYGEN_ALLOWED_HOSTS set, another Host gets a JSON 400 on every path."""
    app = create_app(settings.model_copy(update={"allowed_hosts": "keygen,*.example.com"}))
    async with running(app) as http:
        assert (await http.get("/health/live")).status_code == 200
        ok = await http.get("/health/live", headers={"host": "a.example.com:8010"})
        assert ok.status_code == 200
        for host in ("evil.example", "example.com.evil", "keygen.evil"):
            response = await http.post("/allocate", json={}, headers={"host": host})
            assert response.status_code == 400, host
            assert response.json()["error"]["code"] == "host_not_allowed"


async def _handshake(
    app: AllocateEndpoint, headers: list[tuple[bytes, bytes]], *, extension: bool = True
) -> list[dict[str, object]]:
    """What ``app`` sends in answer to a WebSocket handshake for /allocate."""
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "path": "/allocate",
        "raw_path": b"/allocate",
        "query_string": b"",
        "headers": headers,
        "extensions": {"websocket.http.response": {}} if extension else {},
    }
    await app(scope, receive, send)  # type: ignore[arg-type]
    return sent


async def test_a_websocket_scope_needs_the_key_any_path_needs(settings: Settings) -> None:
    """A WebSocket handshake (from a server that upgrades, which keygen serve's does not)
    without a key gets the JSON 401 as an HTTP response, or a close where the server
    cannot send one, and one from a Host not allowed its JSON 400: it never reaches the
    FastAPI app unauthenticated."""
    keyed = settings.model_copy(update={"auth": "required", "allowed_hosts": "keygen"})
    app = create_app(keyed)
    async with running(app):
        refused = await _handshake(app, [(b"host", b"keygen")])
        assert [m["type"] for m in refused] == [
            "websocket.http.response.start",
            "websocket.http.response.body",
        ]
        assert refused[0]["status"] == 401
        body = refused[1]["body"]
        assert isinstance(body, bytes) and json.loads(body)["error"]["code"] == "unauthorized"
        closed = await _handshake(app, [(b"host", b"keygen")], extension=False)
        assert closed == [{"type": "websocket.close", "code": 1008, "reason": "unauthorized"}]
        elsewhere = await _handshake(app, [(b"host", b"evil.example")])
        assert elsewhere[0]["status"] == 400
        body = elsewhere[1]["body"]
        assert isinstance(body, bytes) and json.loads(body)["error"]["code"] == "host_not_allowed"


@pytest.mark.parametrize(
    ("target", "logged"),
    [
        ("/health/live", "/health/live"),
        ("/metrics?api_key=kg_abc&window=60", "/metrics?api_key=***&window=***"),
        ("/a?token=t&&kg_bare&empty=", "/a?token=***&&***&empty="),
        ("http://user:pw@keygen/a?x=1", "http://***@keygen/a?x=***"),
    ],
)
def test_a_logged_target_shows_no_query_value(target: str, logged: str) -> None:
    """Every query value is masked whatever its name (any may carry a token), and an
    absolute URL's userinfo."""
    assert redact_target(target) == logged
