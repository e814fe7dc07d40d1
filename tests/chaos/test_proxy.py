"""The fault proxy: passes, blackholes, resets and delays real TCP connections."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from keygen.chaos.proxy import FaultProxy, Mode, ProxyServer

pytestmark = pytest.mark.anyio


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    """An echo server on a free port of 127.0.0.1."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):  # the proxy resets it in reset mode
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@pytest.fixture
async def proxy(echo_port: int) -> AsyncIterator[FaultProxy]:
    started = await FaultProxy(echo_port, name="echo").start()
    try:
        yield started
    finally:
        await started.aclose()


async def roundtrip(port: int, payload: bytes = b"ping", timeout: float = 2.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        async with asyncio.timeout(timeout):
            return await reader.readexactly(len(payload))
    finally:
        writer.close()


async def test_pass_forwards_both_ways(proxy: FaultProxy) -> None:
    """In pass mode the proxy is transparent."""
    assert await roundtrip(proxy.port, b"hello") == b"hello"


async def test_drop_blackholes_existing_and_new_connections(proxy: FaultProxy) -> None:
    """In drop mode nothing comes back (the client times out), on an open connection and on
    a new one; back in pass mode a new connection works again."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"a")
    assert await reader.readexactly(1) == b"a"
    proxy.set_mode(Mode.DROP)
    writer.write(b"b")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await reader.readexactly(1)
    with pytest.raises(TimeoutError):
        await roundtrip(proxy.port, timeout=0.3)
    proxy.set_mode(Mode.PASS)
    writer.close()
    assert await roundtrip(proxy.port) == b"ping"


async def test_reset_resets_open_connections_and_new_ones(proxy: FaultProxy) -> None:
    """In reset mode an open connection is reset and a new one is reset on arrival."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"a")
    assert await reader.readexactly(1) == b"a"
    proxy.set_mode(Mode.RESET)
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        async with asyncio.timeout(2):
            await reader.readexactly(1)
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await roundtrip(proxy.port)
    proxy.set_mode(Mode.PASS)
    assert await roundtrip(proxy.port) == b"ping"


async def test_delay_holds_each_chunk_back(proxy: FaultProxy) -> None:
    """In delay mode a round trip takes at least the delay (twice: there and back)."""
    proxy.set_mode(Mode.DELAY, delay=0.1)
    started = time.monotonic()
    assert await roundtrip(proxy.port) == b"ping"
    assert time.monotonic() - started >= 0.2


async def test_proxy_process_is_driven_from_the_parent(echo_port: int) -> None:
    """ProxyServer runs proxies in a child process and switches their mode on command."""
    with ProxyServer() as server:
        handle = await asyncio.to_thread(server.add, "echo", echo_port)
        assert handle.address == f"127.0.0.1:{handle.port}"
        assert await roundtrip(handle.port) == b"ping"
        await asyncio.to_thread(server.set_mode, ["echo"], Mode.RESET)
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await roundtrip(handle.port)
        await asyncio.to_thread(server.set_mode, "echo", Mode.PASS)
        assert await roundtrip(handle.port) == b"ping"
