"""The client library, against the real app in-process."""

from __future__ import annotations

import asyncio

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
        httpx.Response(
            503,
            headers={"Retry-After": "0"},
            json={"error": {"code": "service_unavailable", "message": "down"}},
        ),
        httpx.Response(
            200,
            json={
                "start": 1,
                "end": 2,
                "size": 2,
                "namespace": "default",
                "source": "sqlite",
                "timestamp": 1.0,
            },
        ),
    ]
    transport = httpx.MockTransport(lambda request: answers.pop(0))
    with KeygenClient("http://keygen", transport=transport, retries=1) as keygen:
        assert keygen.allocate(size=2).end == 2
    assert answers == []


def test_sync_client_gives_up_after_retries() -> None:
    """Once retries are spent the 503 is raised with its Retry-After."""
    transport = httpx.MockTransport(
        lambda request: httpx.Response(
            503,
            headers={"Retry-After": "0"},
            json={"error": {"code": "service_unavailable", "message": "down"}},
        )
    )
    with KeygenClient("http://keygen", transport=transport, retries=2) as keygen:
        with pytest.raises(KeygenAPIError) as caught:
            keygen.allocate()
    assert caught.value.status_code == 503 and caught.value.retry_after == 0


def test_sync_client_sends_a_timed_out_request_again_but_raises_other_4xx() -> None:
    """A 408 (the body was too slow: nothing was allocated) is sent again at once; a 422 is
    the caller's error and is raised without another attempt."""
    answers = [
        httpx.Response(
            408,
            headers={"Connection": "close"},
            json={"error": {"code": "request_timeout", "message": "slow body"}},
        ),
        httpx.Response(
            200,
            json={
                "start": 1,
                "end": 2,
                "size": 2,
                "namespace": "default",
                "source": "sqlite",
                "timestamp": 1.0,
            },
        ),
        httpx.Response(422, json={"error": {"code": "invalid_request", "message": "bad"}}),
        httpx.Response(
            200,
            json={
                "start": 3,
                "end": 4,
                "size": 2,
                "namespace": "default",
                "source": "sqlite",
                "timestamp": 1.0,
            },
        ),
    ]
    transport = httpx.MockTransport(lambda request: answers.pop(0))
    with KeygenClient("http://keygen", transport=transport, retries=3) as keygen:
        assert keygen.allocate(size=2).end == 2
        with pytest.raises(KeygenAPIError) as caught:
            keygen.allocate(size=2)
    assert caught.value.status_code == 422
    assert len(answers) == 1  # the 422 was not retried


async def test_concurrent_failures_on_one_instance_all_move_to_the_other() -> None:
    """Many requests refused by a dead instance at once each retry on the other instance:
    none is sent back to the dead one because another request moved the client meanwhile."""
    dead, alive = "http://dead.keygen", "http://alive.keygen"
    sent_to: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        sent_to.append(request.url.host)
        await asyncio.sleep(0.01)  # every request is in flight when the others fail
        if request.url.host == "dead.keygen":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(
            200,
            json={
                "start": 1,
                "end": 1,
                "size": 1,
                "namespace": "default",
                "source": "sqlite",
                "timestamp": 1.0,
            },
        )

    async with AsyncKeygenClient(
        [dead, alive], transport=httpx.MockTransport(handler), retries=1
    ) as keygen:
        got = await asyncio.gather(*(keygen.allocate(size=1) for _ in range(10)))
        assert len(got) == 10  # retries=1: a second refusal would have been raised
        assert sent_to.count("dead.keygen") == 10 and sent_to.count("alive.keygen") == 10
        await keygen.allocate(size=1)  # and later requests start on the live instance
    assert sent_to[-1] == "alive.keygen" and len(sent_to) == 21


async def test_a_shared_client_keeps_to_its_connection_limit() -> None:
    """50 tasks sharing one client reach a real HTTP server over at most ``max_connections``
    connections, and every request is answered (the others wait for a connection)."""
    connections = 0
    answer = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 82\r\n\r\n"
        b'{"start":1,"end":1,"size":1,"namespace":"default","source":"sqlite","timestamp":1}'
    )

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                await asyncio.sleep(0.01)  # slow enough that requests pile up
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        async with AsyncKeygenClient(f"http://127.0.0.1:{port}", max_connections=4) as keygen:
            got = await asyncio.gather(*(keygen.allocate(size=1) for _ in range(50)))
    assert len(got) == 50
    assert 1 <= connections <= 4, connections


def test_max_connections_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        KeygenClient("http://keygen", max_connections=0)
