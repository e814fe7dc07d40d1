"""Zero-downtime restarts: SIGTERM drains the requests in flight, and a rolling restart of
the instances under load loses no request of a client that knows both instances."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import pytest

from keygen.checker import Record, check
from keygen.client import AsyncKeygenClient
from keygen.cluster.postgres import PostgresNode
from tests.support.load import wait_until
from tests.support.processes import ServeProcess

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

CLIENTS = 8


async def test_sigterm_drains_requests_in_flight(
    controlled_postgres: PostgresNode, postgres_url: str, tmp_path: Path
) -> None:
    """Requests waiting on a frozen ledger when SIGTERM arrives are still answered with
    their ranges once it thaws, and only then does the server exit."""
    env = {"KEYGEN_DATABASE_URL": postgres_url, "ALLOCATION_TIMEOUT": "20"}
    server = ServeProcess(env, log=tmp_path / "serve.log").start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            assert (await http.post("/allocate", json={"size": 5})).status_code == 200
            controlled_postgres.pause()
            try:
                in_flight = [
                    asyncio.create_task(http.post("/allocate", json={"size": 5})) for _ in range(5)
                ]
                await asyncio.sleep(1.0)  # the requests now wait inside the server
                assert not any(task.done() for task in in_flight)
                assert server.proc is not None
                server.proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(1.0)
                assert server.proc.poll() is None, "exited with requests in flight"
            finally:
                controlled_postgres.resume()
            responses = await asyncio.gather(*in_flight)
        assert [r.status_code for r in responses] == [200] * 5
        # uvicorn re-raises the SIGTERM once it has shut down cleanly.
        assert server.proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        server.kill(signal.SIGKILL)
    verdict = check(Record.from_json(r.json()) for r in responses)
    assert verdict.ok, verdict.summary()


async def test_sigterm_answers_a_request_whose_body_never_came(tmp_path: Path) -> None:
    """A client that had sent only the headers of its POST when SIGTERM came gets a 408
    (nothing allocated: it may send the request again, elsewhere) once KEYGEN_BODY_TIMEOUT
    has passed, not a 500 when the graceful shutdown runs out; then the server exits."""
    server = ServeProcess({"KEYGEN_BODY_TIMEOUT": "1"}, log=tmp_path / "serve.log").start()
    try:
        assert server.proc is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"POST /allocate HTTP/1.1\r\nHost: keygen\r\n"
            b"Content-Type: application/json\r\nContent-Length: 13\r\n\r\n"
        )
        await writer.drain()
        await asyncio.sleep(0.3)  # the request now waits for its body inside the server
        server.proc.send_signal(signal.SIGTERM)
        # Read until the server closes the connection (ALLOCATION_TIMEOUT is 30 s here: a
        # server waiting out its graceful shutdown would not answer within this bound).
        response = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert response.split(b"\r\n", 1)[0] == b"HTTP/1.1 408 Request Timeout", response
        assert b'"request_timeout"' in response
        assert server.proc.wait(timeout=10) in (0, -signal.SIGTERM)
    finally:
        server.kill(signal.SIGKILL)


async def test_rolling_restart_loses_no_request(postgres_url: str, tmp_path: Path) -> None:
    """Two instances restarted one after the other (SIGTERM, start again) under load from
    clients that know both: every request gets its range, and no two ranges overlap."""
    env = {"KEYGEN_DATABASE_URL": postgres_url, "ALLOCATION_TIMEOUT": "10"}
    servers = [
        ServeProcess({**env, "KEYGEN_INSTANCE_ID": f"i{i}"}, log=tmp_path / f"serve-{i}.log")
        for i in range(2)
    ]
    stop = asyncio.Event()
    acknowledged: list[Record] = []
    failures: list[str] = []

    async def client_loop(i: int) -> None:
        urls = [servers[i % 2].url, servers[(i + 1) % 2].url]
        async with AsyncKeygenClient(urls, timeout=15, retries=10) as keygen:
            while not stop.is_set():
                size = 1 + i * 13
                try:
                    got = await keygen.allocate(size=size, namespace="orders")
                except Exception as exc:
                    failures.append(repr(exc))
                    continue
                acknowledged.append(
                    Record(got.namespace, got.start, got.end, got.size, size, got.source)
                )

    try:
        for server in servers:
            server.start()
        loops = [asyncio.create_task(client_loop(i)) for i in range(CLIENTS)]
        await wait_until(lambda: len(acknowledged) >= 300, timeout=30)
        for server in servers:
            started = len(acknowledged)
            server.stop()  # SIGTERM: drains, then exits
            await asyncio.to_thread(server.start)

            def grew(n: int = started) -> bool:
                return len(acknowledged) >= n + 300

            await wait_until(grew, timeout=30)
        stop.set()
        await asyncio.gather(*loops)
    finally:
        stop.set()
        for server in servers:
            server.kill(signal.SIGKILL)
    assert not failures, failures[:5]
    verdict = check(acknowledged)
    assert verdict.ok, verdict.summary()
    assert verdict.ranges >= 900
