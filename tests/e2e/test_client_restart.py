"""A client of a single instance rides out that instance's restart: a request sent while the
instance is down waits with backoff and gets its range once the instance is back, within
its deadline, and the requests of a client loop running across the restart all succeed."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest

from keygen.checker import Record, check
from keygen.client import DEFAULT_TIMEOUT, AllocatedRange, AsyncKeygenClient
from tests.support.load import wait_until
from tests.support.processes import ServeProcess

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


class RefusalCounter(httpx.AsyncBaseTransport):
    """httpx's own transport, counting the attempts that could not reach the instance."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.failed = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self.inner.handle_async_request(request)
        except httpx.TransportError:
            self.failed += 1
            raise

    async def aclose(self) -> None:
        await self.inner.aclose()


def _record(got: AllocatedRange, requested: int) -> Record:
    return Record(got.namespace, got.start, got.end, got.size, requested, got.source)


async def test_a_request_sent_while_the_only_instance_restarts_succeeds(tmp_path: Path) -> None:
    """With one URL and the client's defaults (retries, ``timeout``): the instance is stopped
    with SIGTERM while a client loop runs, a request is sent while it is down, and the
    instance is started again on the same port; that request is answered once it is back,
    within its deadline, no request of the loop fails and no two ranges overlap."""
    server = ServeProcess({"KEYGEN_DATA_DIR": str(tmp_path / "data")}, log=tmp_path / "serve.log")
    acknowledged: list[Record] = []
    failures: list[str] = []
    stop = asyncio.Event()

    async def client_loop(keygen: AsyncKeygenClient) -> None:
        while not stop.is_set():
            try:
                got = await keygen.allocate(size=7)
            except Exception as exc:  # every failure is a finding; the loop goes on
                failures.append(repr(exc))
                continue
            acknowledged.append(_record(got, 7))

    counter = RefusalCounter()
    try:
        server.start()
        async with (
            AsyncKeygenClient(server.url) as loop_client,
            AsyncKeygenClient(server.url, transport=counter) as keygen,
        ):
            loop = asyncio.create_task(client_loop(loop_client))
            await wait_until(lambda: len(acknowledged) >= 50, timeout=30)
            before = await keygen.allocate(size=3)  # its connection is kept alive

            await asyncio.to_thread(server.stop)  # SIGTERM; returns once the server exited
            sent = time.monotonic()
            down = asyncio.create_task(keygen.allocate(size=3))
            # Refused, waited, and refused again: it is retrying, not failed at once.
            await wait_until(lambda: counter.failed >= 2 or down.done(), timeout=10)
            assert not down.done(), down.exception()
            restarted = time.monotonic()
            await asyncio.to_thread(server.start)
            back = time.monotonic()
            got = await asyncio.wait_for(down, DEFAULT_TIMEOUT + 5)
            answered = time.monotonic()

            started = len(acknowledged)
            await wait_until(lambda: len(acknowledged) >= started + 50, timeout=30)
            stop.set()
            await asyncio.wait_for(loop, DEFAULT_TIMEOUT + 5)
    finally:
        stop.set()
        server.kill(signal.SIGKILL)

    assert answered - sent < DEFAULT_TIMEOUT, (
        f"answered {answered - sent:.2f}s after it was sent; down {restarted - sent:.2f}s, "
        f"back after {back - restarted:.2f}s more"
    )
    assert counter.failed >= 2
    assert not failures, failures[:5]
    verdict = check([*acknowledged, _record(before, 3), _record(got, 3)])
    assert verdict.ok, verdict.summary()
    assert verdict.ranges >= 102
