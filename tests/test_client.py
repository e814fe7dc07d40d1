"""The client library, against the real app in-process."""

from __future__ import annotations

import httpx
import pytest

from keygen.api.allocate import AllocateEndpoint
from keygen.client import AsyncKeygenClient, KeygenAPIError, KeygenClient
from tests.support.app import running

pytestmark = pytest.mark.anyio


async def test_async_client_allocates_and_raises_api_errors(app: AllocateEndpoint) -> None:
    """The async client returns ranges and raises KeygenAPIError with the server's code."""
    async with running(app):
        transport = httpx.ASGITransport(app=app)
        async with AsyncKeygenClient("http://keygen", transport=transport) as keygen:
            got = await keygen.allocate(size=3, namespace="orders")
            assert (got.start, got.end, got.size, got.namespace) == (1, 3, 3, "orders")
            assert list(got) == [1, 2, 3]
            with pytest.raises(KeygenAPIError) as caught:
                await keygen.allocate(size=0)
            assert (caught.value.status_code, caught.value.code) == (422, "invalid_request")
            assert (await keygen.health())["status"] == "healthy"


def test_sync_client_retries_503_after_retry_after() -> None:
    """A 503 is retried after Retry-After, and the later 200 is returned."""
    answers = [
        httpx.Response(503, headers={"Retry-After": "0"},
                       json={"error": {"code": "service_unavailable", "message": "down"}}),
        httpx.Response(200, json={"start": 1, "end": 2, "size": 2, "namespace": "default",
                                  "source": "sqlite", "timestamp": 1.0}),
    ]
    transport = httpx.MockTransport(lambda request: answers.pop(0))
    with KeygenClient("http://keygen", transport=transport, retries=1) as keygen:
        assert keygen.allocate(size=2).end == 2
    assert answers == []


def test_sync_client_gives_up_after_retries() -> None:
    """Once retries are spent the 503 is raised with its Retry-After."""
    transport = httpx.MockTransport(lambda request: httpx.Response(
        503, headers={"Retry-After": "0"},
        json={"error": {"code": "service_unavailable", "message": "down"}},
    ))
    with KeygenClient("http://keygen", transport=transport, retries=2) as keygen:
        with pytest.raises(KeygenAPIError) as caught:
            keygen.allocate()
    assert caught.value.status_code == 503 and caught.value.retry_after == 0
