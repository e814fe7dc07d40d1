"""``keygen chaos``'s SIGTERM handler, in process: a signal that lands inside a transport's
callback still stops the run (uvloop logs and swallows an exception raised there)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import pytest
import uvloop

from keygen.chaos.run import _Sigterm


class _SignalOnData(asyncio.Protocol):
    """Sends SIGTERM to this process from inside ``data_received``, so that the Python
    handler runs in the middle of the callback."""

    def data_received(self, data: bytes) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        sum(range(10_000))  # bytecode for the interpreter to run the handler in


async def _send_one_byte(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"x")
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def _signalled_inside_a_callback(handler: _Sigterm, *, watch: bool) -> str:
    server = await asyncio.start_server(_send_one_byte, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    if watch:
        handler.watch(asyncio.current_task())
    transport, _ = await asyncio.get_running_loop().create_connection(
        _SignalOnData, "127.0.0.1", port
    )
    try:
        await asyncio.sleep(2)
        return "carried on"
    except asyncio.CancelledError:
        return "cancelled"
    finally:
        handler.watch(None)
        transport.close()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)  # the transports' close callbacks run


@pytest.fixture
def sigterm() -> Iterator[_Sigterm]:
    handler = _Sigterm()
    previous = signal.signal(signal.SIGTERM, handler)
    yield handler
    signal.signal(signal.SIGTERM, previous)


def test_sigterm_inside_a_callback_cancels_the_watched_task(sigterm: _Sigterm) -> None:
    assert uvloop.run(_signalled_inside_a_callback(sigterm, watch=True)) == "cancelled"
    assert sigterm.received
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # a second one is ignored


def test_without_a_watched_task_the_signal_raises(sigterm: _Sigterm) -> None:
    """Outside the loop's callbacks (setting up, stopping) it is a KeyboardInterrupt; and
    raised inside a callback it is lost, which is why the loop phase is watched."""
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        sum(range(10_000))
    signal.signal(signal.SIGTERM, sigterm)
    assert uvloop.run(_signalled_inside_a_callback(sigterm, watch=False)) == "carried on"
