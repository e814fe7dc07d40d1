"""Body-read deadlines: the sweeper's cancellation becomes a RequestTimeout, any other
cancellation stays a cancellation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from keygen.api.allocate import read_body
from keygen.api.deadlines import ReadDeadlines
from keygen.errors import RequestTimeout

pytestmark = pytest.mark.anyio

SCOPE: dict[str, Any] = {"headers": [(b"content-type", b"application/json")]}


async def never() -> dict[str, Any]:
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


async def test_a_read_past_its_deadline_is_a_request_timeout() -> None:
    deadlines = ReadDeadlines(0.2)
    deadlines.start()
    try:
        with pytest.raises(RequestTimeout):
            await asyncio.wait_for(read_body(SCOPE, never, 4096, deadlines), 5)
        assert not deadlines._readers and not deadlines._expired
    finally:
        await deadlines.stop()


async def test_a_body_in_time_is_read_and_forgotten() -> None:
    deadlines = ReadDeadlines(0.2)
    deadlines.start()
    chunks = [{"body": b'{"size"', "more_body": True}, {"body": b": 5}", "more_body": False}]

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0.01)
        return chunks.pop(0)

    try:
        assert await read_body(SCOPE, receive, 4096, deadlines) == b'{"size": 5}'
        assert not deadlines._readers
        await asyncio.sleep(0.3)  # a sweep after the read does not touch the task
    finally:
        await deadlines.stop()


async def test_another_cancellation_is_not_turned_into_a_timeout() -> None:
    """Cancelled from elsewhere (a shutdown), while reading: a cancellation, even when the
    deadline passes at the same moment."""
    deadlines = ReadDeadlines(0.2)
    deadlines.start()
    try:
        alone = asyncio.create_task(read_body(SCOPE, never, 4096, deadlines))
        await asyncio.sleep(0.01)
        alone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await alone

        both = asyncio.create_task(read_body(SCOPE, never, 4096, deadlines))
        await asyncio.sleep(0.01)
        del deadlines._readers[both]  # what the sweeper does to a late read...
        deadlines._expired.add(both)
        both.cancel()
        both.cancel()  # ...and a shutdown's cancellation at the same moment
        with pytest.raises(asyncio.CancelledError):
            await both
    finally:
        await deadlines.stop()
