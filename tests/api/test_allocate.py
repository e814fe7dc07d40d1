"""POST /allocate through the real app, in-process."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from keygen.api import create_app
from keygen.checker import Record, check
from keygen.config import Settings
from tests.support.app import running

pytestmark = pytest.mark.anyio


async def test_allocates_exact_size(client: httpx.AsyncClient) -> None:
    """A request gets exactly the size it asked for, end - start + 1 == size."""
    response = await client.post("/allocate", json={"size": 1000})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"start", "end", "size", "namespace", "source", "timestamp"}
    assert body["end"] - body["start"] + 1 == body["size"] == 1000
    assert body["start"] >= 1
    assert body["namespace"] == "default"
    assert body["source"] == "sqlite"
    assert abs(body["timestamp"] - time.time()) < 60


async def test_defaults_without_body(settings: Settings) -> None:
    """With no body at all, the size is ID_BLOCK_SIZE and the namespace 'default'."""
    async with running(create_app(settings.model_copy(update={"id_block_size": 77}))) as http:
        body = (await http.post("/allocate", headers={"content-type": "application/json"})).json()
        empty = (await http.post("/allocate", json={})).json()
    assert body["size"] == empty["size"] == 77
    assert body["namespace"] == "default"
    assert empty["start"] == body["end"] + 1


async def test_namespaces_are_independent_sequences(client: httpx.AsyncClient) -> None:
    """Each namespace is created on first use and counts from 1 on its own."""
    a = (await client.post("/allocate", json={"size": 5, "namespace": "orders"})).json()
    b = (await client.post("/allocate", json={"size": 5, "namespace": "urls.v2"})).json()
    assert (a["namespace"], a["start"]) == ("orders", 1)
    assert (b["namespace"], b["start"]) == ("urls.v2", 1)


async def test_json_content_type_variants_are_accepted(client: httpx.AsyncClient) -> None:
    """application/json with a charset, and +json media types, are JSON."""
    for content_type in ("application/json; charset=utf-8", "application/vnd.keygen+json"):
        response = await client.post(
            "/allocate", content=b'{"size": 2}', headers={"content-type": content_type}
        )
        assert response.status_code == 200, response.text


async def test_max_block_size_is_allowed(settings: Settings) -> None:
    """A request of exactly KEYGEN_MAX_BLOCK_SIZE is served."""
    app = create_app(settings.model_copy(update={"max_block_size": 5000, "lease_size": 100}))
    async with running(app) as http:
        response = await http.post("/allocate", json={"size": 5000})
    assert response.status_code == 200
    assert response.json()["size"] == 5000


async def test_concurrent_requests_are_disjoint(client: httpx.AsyncClient) -> None:
    """Hundreds of concurrent requests of mixed sizes and namespaces never share an ID."""
    sizes = [1 + (i * 37) % 500 for i in range(300)]

    async def one(i: int, size: int) -> Record:
        body = (
            await client.post("/allocate", json={"size": size, "namespace": f"ns{i % 3}"})
        ).json()
        return Record.from_json({**body, "requested": size})

    verdict = check(await asyncio.gather(*(one(i, s) for i, s in enumerate(sizes))))
    assert verdict.ok, verdict.summary()
    assert verdict.ranges == 300


async def test_restart_on_same_data_dir_continues_above(settings: Settings) -> None:
    """A new app on the same data dir never repeats what the previous one handed out."""
    async with running(create_app(settings)) as http:
        before = [(await http.post("/allocate", json={"size": 10})).json() for _ in range(5)]
    async with running(create_app(settings)) as http:
        after = [(await http.post("/allocate", json={"size": 10})).json() for _ in range(5)]
    assert min(r["start"] for r in after) > max(r["end"] for r in before)
