"""The client library, against the real app in-process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest
import stamina

from keygen.api.allocate import AllocateEndpoint
from keygen.client import (
    MAX_RETRY_WAIT,
    MIN_ATTEMPT_TIME,
    WAIT_INITIAL,
    WAIT_JITTER,
    WAIT_MAX,
    AsyncKeygenClient,
    KeygenAPIError,
    KeygenClient,
)
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
    """Once retries are spent the 503 is raised with its Retry-After, and a note of the
    attempts."""
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
    assert "gave up after 3 attempts" in _notes(caught.value)
    assert "no retries left (retries=2)" in _notes(caught.value)


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
    """max_connections below 1 is refused."""
    with pytest.raises(ValueError, match="max_connections"):
        KeygenClient("http://keygen", max_connections=0)


def _allocated(start: int = 1) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "start": start,
            "end": start,
            "size": 1,
            "namespace": "default",
            "source": "sqlite",
            "timestamp": 1.0,
        },
    )


def _unavailable(retry_after: str | None) -> httpx.Response:
    return httpx.Response(
        503,
        headers={"Retry-After": retry_after} if retry_after is not None else {},
        json={"error": {"code": "service_unavailable", "message": "down"}},
    )


class FakeClock:
    """``time.monotonic`` and ``time.sleep`` for a sync client: sleeping only moves the clock
    on, and every sleep is recorded."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """A controlled clock for the client's deadline and for stamina's waits (tenacity sleeps
    with ``time.sleep`` and measures with ``time.monotonic``)."""
    fake = FakeClock()
    monkeypatch.setattr(time, "monotonic", fake.monotonic)
    monkeypatch.setattr(time, "sleep", fake.sleep)
    return fake


def _refusing(
    sent: list[httpx.Request], clock: FakeClock | None = None, cost: float = 0.0
) -> Callable[[httpx.Request], httpx.Response]:
    """A handler that records each request and refuses it (after ``cost`` seconds)."""

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if clock is not None:  # the attempt takes time too, at most its timeout
            clock.now += min(cost, request.extensions["timeout"]["read"])
        raise httpx.ConnectError("refused", request=request)

    return handler


def _notes(error: BaseException) -> str:
    return "\n".join(getattr(error, "__notes__", []))


def test_one_instance_is_retried_with_exponential_backoff_and_jitter(clock: FakeClock) -> None:
    """With one URL, each retry after a refusal waits stamina's backoff: 0.1 s doubling per
    attempt up to WAIT_MAX, plus up to WAIT_JITTER of jitter; then the error is raised with
    a note of every attempt and why they stopped."""
    sent: list[httpx.Request] = []
    transport = httpx.MockTransport(_refusing(sent))
    with KeygenClient("http://keygen", transport=transport, retries=6) as keygen:
        with pytest.raises(httpx.ConnectError) as caught:
            keygen.allocate()
    assert len(sent) == 7
    assert len(clock.sleeps) == 6
    for n, slept in enumerate(clock.sleeps, start=1):
        floor = min(WAIT_MAX, WAIT_INITIAL * 2 ** (n - 1))
        assert floor <= slept <= min(WAIT_MAX, floor + WAIT_JITTER), (n, clock.sleeps)
    note = _notes(caught.value)
    assert "gave up after 7 attempts" in note and "no retries left (retries=6)" in note
    assert note.count("http://keygen: ConnectError: refused") == 7


def test_jitter_spreads_the_clients_of_one_instance_apart(clock: FakeClock) -> None:
    """Two clients refused by the same instance do not retry in step."""
    schedules = []
    for _ in range(2):
        clock.sleeps.clear()
        transport = httpx.MockTransport(_refusing([]))
        with KeygenClient("http://keygen", transport=transport, retries=3) as keygen:
            with pytest.raises(httpx.ConnectError):
                keygen.allocate()
        schedules.append(list(clock.sleeps))
    assert schedules[0] != schedules[1]


def test_retry_after_is_honoured_and_capped(clock: FakeClock) -> None:
    """A 503's Retry-After is waited before the next attempt, at most MAX_RETRY_WAIT; a 503
    without one waits the backoff."""
    answers = [_unavailable("3"), _unavailable("120"), _unavailable(None), _allocated()]
    transport = httpx.MockTransport(lambda request: answers.pop(0))
    with KeygenClient("http://keygen", transport=transport, timeout=60) as keygen:
        assert keygen.allocate().start == 1
    assert clock.sleeps[:2] == [3.0, MAX_RETRY_WAIT]
    assert 4 * WAIT_INITIAL <= clock.sleeps[2] <= 4 * WAIT_INITIAL + WAIT_JITTER
    assert answers == []


def test_a_retry_after_beyond_the_deadline_is_not_waited_for(clock: FakeClock) -> None:
    """A Retry-After that would end past the deadline raises the 503 at once, saying so."""
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return _unavailable("8")

    transport = httpx.MockTransport(handler)
    with KeygenClient("http://keygen", transport=transport, timeout=5) as keygen:
        with pytest.raises(KeygenAPIError) as caught:
            keygen.allocate()
    assert (caught.value.status_code, caught.value.retry_after) == (503, 8)
    assert len(sent) == 1 and clock.sleeps == []
    assert "Retry-After 8s would pass the deadline (timeout=5s" in _notes(caught.value)


def test_the_deadline_bounds_every_attempt_and_wait(clock: FakeClock) -> None:
    """Attempts (0.3 s each here) and waits all end within ``timeout``: each attempt may
    take only what is left, the last wait is cut short to leave an attempt room, and the
    error says the deadline ended it."""
    sent: list[httpx.Request] = []
    transport = httpx.MockTransport(_refusing(sent, clock, cost=0.3))
    start = clock.now
    with KeygenClient("http://keygen", transport=transport, timeout=5, retries=100) as keygen:
        with pytest.raises(httpx.ConnectError) as caught:
            keygen.allocate()
    assert clock.now - start <= 5
    elapsed = 0.0
    for request, slept in zip(sent, [*clock.sleeps, 0.0], strict=True):
        read_timeout = request.extensions["timeout"]["read"]
        assert read_timeout == pytest.approx(5 - elapsed)  # what was left of the deadline
        assert read_timeout >= MIN_ATTEMPT_TIME
        elapsed += min(0.3, read_timeout) + slept
    assert "the deadline (timeout=5s) leaves no time for another attempt" in _notes(caught.value)
    assert f"gave up after {len(sent)} attempts" in _notes(caught.value)


def test_several_instances_are_tried_at_once_then_with_backoff(clock: FakeClock) -> None:
    """Each instance this request has not tried yet is tried at once; going back to one it
    already tried waits the backoff of the attempts so far."""
    sent: list[httpx.Request] = []
    transport = httpx.MockTransport(_refusing(sent))
    urls = ["http://a.keygen", "http://b.keygen", "http://c.keygen"]
    with KeygenClient(urls, transport=transport, retries=5) as keygen:
        with pytest.raises(httpx.ConnectError) as caught:
            keygen.allocate()
    assert [r.url.host for r in sent] == ["a.keygen", "b.keygen", "c.keygen"] * 2
    assert clock.sleeps[:2] == [0.0, 0.0]
    for n, slept in zip((3, 4, 5), clock.sleeps[2:], strict=True):
        floor = min(WAIT_MAX, WAIT_INITIAL * 2 ** (n - 1))
        assert floor <= slept <= min(WAIT_MAX, floor + WAIT_JITTER), (n, clock.sleeps)
    assert "1. http://a.keygen: ConnectError" in _notes(caught.value)
    assert "6. http://c.keygen: ConnectError" in _notes(caught.value)


def test_stamina_test_mode_removes_the_waits() -> None:
    """Under ``stamina.set_testing`` the client retries without waiting, as many times as
    the test mode allows, and says that stamina stopped it."""
    sent: list[httpx.Request] = []
    transport = httpx.MockTransport(_refusing(sent))
    started = time.monotonic()
    with stamina.set_testing(True, attempts=3):
        with KeygenClient("http://keygen", transport=transport) as keygen:
            with pytest.raises(httpx.ConnectError) as caught:
                keygen.allocate()
    assert len(sent) == 3 and time.monotonic() - started < 1.0
    assert "gave up after 3 attempts" in _notes(caught.value)
    assert "stamina stopped retrying" in _notes(caught.value)


async def test_async_client_gives_up_at_its_deadline() -> None:
    """The async client, refused every time, stops retrying within its ``timeout`` (real
    time: 1 s) and says the deadline ended it."""
    sent: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        raise httpx.ConnectError("refused", request=request)

    started = time.monotonic()
    async with AsyncKeygenClient(
        "http://keygen", transport=httpx.MockTransport(handler), timeout=1.0, retries=100
    ) as keygen:
        with pytest.raises(httpx.ConnectError) as caught:
            await keygen.allocate()
    took = time.monotonic() - started
    assert took <= 1.0 + 0.2, took  # the last wait ends MIN_ATTEMPT_TIME before it
    assert len(sent) >= 2  # it did retry, with waits between
    assert "the deadline (timeout=1s)" in _notes(caught.value)


def test_timeout_and_retries_are_checked() -> None:
    """A deadline that is not positive, or negative retries, are refused at once."""
    with pytest.raises(ValueError, match="timeout"):
        KeygenClient("http://keygen", timeout=0)
    with pytest.raises(ValueError, match="retries"):
        AsyncKeygenClient("http://keygen", retries=-1)
