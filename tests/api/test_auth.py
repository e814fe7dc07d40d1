"""API keys at the HTTP edge, in-process: 401, 403, allowed, and the open probes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest

from keygen.api import create_app
from keygen.auth import load_secret, new_key
from keygen.config import Settings
from keygen.ledgers.sqlite import SqliteLedger
from tests.support.app import running

pytestmark = pytest.mark.anyio


async def add_key(settings: Settings, *scopes: str) -> str:
    token, record = new_key("test", scopes, load_secret(settings), time.time())
    ledger = await SqliteLedger.open(settings.data_dir)
    try:
        await ledger.add_api_key(record)
    finally:
        await ledger.aclose()
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def keyed(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    """A started app with keys (auto mode): one per scope set, by name."""
    tokens = {
        "orders": await add_key(settings, "allocate:orders"),
        "shop": await add_key(settings, "allocate:shop-*"),
        "read": await add_key(settings, "read"),
        "admin": await add_key(settings, "admin"),
    }
    async with running(create_app(settings)) as http:
        yield http, tokens


async def granted(settings: Settings) -> int:
    ledger = await SqliteLedger.open(settings.data_dir)
    try:
        return sum(s.last_id for s in await ledger.status())
    finally:
        await ledger.aclose()


async def test_allocate_without_a_key_is_401_and_allocates_nothing(
    keyed: tuple[httpx.AsyncClient, dict[str, str]], settings: Settings
) -> None:
    """No key, a wrong key or another scheme: 401 in the JSON error shape, nothing granted."""
    http, _ = keyed
    for headers in ({}, bearer("kg_wrong"), {"Authorization": "Basic dTpw"}):
        response = await http.post("/allocate", json={"size": 5}, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert await granted(settings) == 0


async def test_allocate_outside_the_keys_namespaces_is_403(
    keyed: tuple[httpx.AsyncClient, dict[str, str]], settings: Settings
) -> None:
    """A valid key whose scopes do not match the namespace gets 403; nothing is granted."""
    http, tokens = keyed
    for name, namespace in (("orders", "default"), ("shop", "shops"), ("read", "orders")):
        response = await http.post(
            "/allocate", json={"namespace": namespace}, headers=bearer(tokens[name])
        )
        assert response.status_code == 403, (name, namespace)
        assert response.json()["error"]["code"] == "forbidden"
    assert await granted(settings) == 0


async def test_allocate_within_the_keys_scopes_is_served(
    keyed: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    """A key allocates in the namespaces its globs match; admin anywhere."""
    http, tokens = keyed
    for name, namespace in (("orders", "orders"), ("shop", "shop-eu"), ("admin", "default")):
        response = await http.post(
            "/allocate", json={"namespace": namespace, "size": 3}, headers=bearer(tokens[name])
        )
        assert response.status_code == 200, response.text
        assert response.json()["namespace"] == namespace


@pytest.mark.parametrize(
    "path", ["/metrics", "/metrics/history", "/alerts", "/ledger", "/dashboard", "/openapi.json"]
)
async def test_monitoring_needs_the_read_scope(
    keyed: tuple[httpx.AsyncClient, dict[str, str]], path: str
) -> None:
    """Without a key 401, with an allocate-only key 403, with read or admin 200."""
    http, tokens = keyed
    assert (await http.get(path)).status_code == 401
    assert (await http.get(path, headers=bearer(tokens["orders"]))).status_code == 403
    assert (await http.get(path, headers=bearer(tokens["read"]))).status_code == 200
    assert (await http.get(path, headers=bearer(tokens["admin"]))).status_code == 200


async def test_static_files_and_docs_need_the_read_scope(
    keyed: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    """The dashboard's assets and /docs are behind the read scope too."""
    http, tokens = keyed
    for path in ("/docs", "/static/favicon.svg"):
        assert (await http.get(path)).status_code == 401
        assert (await http.get(path, headers=bearer(tokens["read"]))).status_code == 200


async def test_health_shows_the_status_only_without_read(
    keyed: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    """/health without a key (or with one lacking read) is the status only; with read the
    whole document; a token that is no key is a 401."""
    http, tokens = keyed
    for headers in ({}, bearer(tokens["orders"])):
        response = await http.get("/health", headers=headers)
        assert response.status_code == 200 and response.json() == {"status": "healthy"}
    detailed = await http.get("/health", headers=bearer(tokens["read"]))
    assert "layers" in detailed.json()
    assert (await http.get("/health", headers=bearer("kg_nope"))).status_code == 401


async def test_orchestrator_probes_stay_open(
    keyed: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    """/health/live and /health/ready answer without a key, with the status only."""
    http, _ = keyed
    assert (await http.get("/health/live")).json() == {"status": "alive"}
    assert (await http.get("/health/ready")).json() == {"status": "healthy"}


async def test_required_with_no_key_refuses_everything(settings: Settings) -> None:
    """KEYGEN_AUTH=required with an empty key table: every allocation is a 401."""
    required = settings.model_copy(update={"auth": "required"})
    async with running(create_app(required)) as http:
        response = await http.post("/allocate", json={})
        assert response.status_code == 401
        assert (await http.get("/health/ready")).status_code == 200


async def test_off_ignores_keys(settings: Settings) -> None:
    """KEYGEN_AUTH=off: keys exist, yet nothing is checked."""
    await add_key(settings, "read")
    async with running(create_app(settings.model_copy(update={"auth": "off"}))) as http:
        assert (await http.post("/allocate", json={})).status_code == 200
        assert "layers" in (await http.get("/health")).json()
