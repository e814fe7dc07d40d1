"""Every alert rule firing for real in a running ``keygen serve``, and the webhook it calls.

Each test starts the service with ``KEYGEN_ALERT_WEBHOOK_URL`` pointing at a receiver of its
own (``tests/support/webhook.py``) and ``KEYGEN_ALERT_TIME_SCALE=0.02``, so that a rule's
window and ``for`` duration are 2 % of production's (KeygenLayerDown's 30 s is 0.6 s,
KeygenLatencyHigh's 5 minutes is 6 s). The cause is real each time: PostgreSQL stopped or
paused, a Redis master killed until Sentinel fails it over, a delay proxy in front of the
ledger, a namespace's counter moved near 2^63-1. Each test checks that ``GET /alerts`` shows
the alert firing with its labels, that the receiver got an Alertmanager (version 4) message
for it, and, once the cause is gone, the "resolved" one where the rule allows it.
"""

from __future__ import annotations

import asyncio
import math
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from keygen.alerts import HEADROOM_LOW, RULES
from keygen.chaos.proxy import Mode, ProxyServer
from keygen.cluster.postgres import PostgresNode
from keygen.cluster.topology import LocalCluster
from keygen.constants import MAX_ID, SOURCE_POSTGRESQL, SOURCE_REDIS, SOURCE_RESERVE
from keygen.ledgers.sqlite import SqliteLedger
from tests.support.load import LoadResult, run_load, wait_for_acks, wait_until
from tests.support.processes import ServeProcess
from tests.support.webhook import WebhookReceiver

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

TIME_SCALE = 0.02
INSTANCE = "alerts-test"
#: Seconds any one wait may take: a rule's scaled ``for`` is at most 6 s, a probe runs every
#: second, and a shared 2-core machine may be slow.
DEADLINE = 30.0
RULE = {rule.name: rule for rule in RULES}


def service_env(tmp_path: Path, receiver: WebhookReceiver, **extra: str) -> dict[str, str]:
    return {
        "KEYGEN_DATA_DIR": str(tmp_path / "data"),
        "KEYGEN_INSTANCE_ID": INSTANCE,
        "KEYGEN_ALERT_WEBHOOK_URL": receiver.url,
        "KEYGEN_ALERT_TIME_SCALE": str(TIME_SCALE),
        "KEYGEN_HEALTH_TIMEOUT": "0.5",
        "KEYGEN_BREAKER_RESET_TIMEOUT": "0.5",
        **extra,
    }


def postgres_env(postgres_url: str, **extra: str) -> dict[str, str]:
    """The PostgreSQL ledger serving directly, failing fast when it is down."""
    return {
        "KEYGEN_DATABASE_URL": postgres_url,
        "KEYGEN_POSTGRESQL_MODE": "direct",
        "ALLOCATION_TIMEOUT": "1",
        "KEYGEN_DB_CONNECT_TIMEOUT": "0.5",
        "KEYGEN_DB_COMMAND_TIMEOUT": "0.5",
        **extra,
    }


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as webhook:
        yield webhook


@asynccontextmanager
async def serving(env: dict[str, str], log: Path) -> AsyncIterator[ServeProcess]:
    server = ServeProcess(env, log=log)
    try:
        await asyncio.to_thread(server.start)
        yield server
    finally:
        # SIGTERM, so that it removes its run directory (SIGKILL after 30 s; also when it
        # never became ready).
        await asyncio.to_thread(server.stop)


@asynccontextmanager
async def loading(
    url: str, *, clients: int = 2, sizes: tuple[int, int] = (10, 10), **options: Any
) -> AsyncIterator[LoadResult]:
    """Allocations on ``url`` until the block ends; the result fills in as it runs."""
    stop, result = asyncio.Event(), LoadResult()
    task = asyncio.create_task(
        run_load(
            url,
            clients=clients,
            duration=math.inf,
            sizes=sizes,
            stop=stop,
            result=result,
            timeout=15,
            refusal_pause=0.05,
            **options,
        )
    )
    try:
        yield result
    finally:
        stop.set()
        await task


async def get_json(url: str) -> Any:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(url)
    assert response.status_code in (200, 503), f"GET {url}: {response.status_code} {response.text}"
    return response.json()


def _matches(alert: dict[str, Any], name: str, labels: dict[str, str]) -> bool:
    return alert["name"] == name and all(alert["labels"].get(k) == v for k, v in labels.items())


async def alert_until(
    url: str, name: str, state: str, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """Poll ``GET /alerts`` until ``name`` (with ``labels``) is in ``state``; return its entry
    (for ``inactive``: the rule's entries). On the deadline, fail with what it showed."""
    labels = labels or {}
    deadline = time.monotonic() + DEADLINE
    while True:
        document: dict[str, list[dict[str, Any]]] = await get_json(f"{url}/alerts")
        shown = [a for a in document["alerts"] if a["name"] == name]
        mine = [a for a in shown if _matches(a, name, labels)]
        if state == "inactive":
            if not [a for a in mine if a["state"] != "inactive"]:
                return {"name": name, "entries": shown}
        elif hit := [a for a in mine if a["state"] == state]:
            return hit[0]
        if time.monotonic() > deadline:
            raise AssertionError(
                f"GET /alerts: {name} {labels} not {state} within {DEADLINE:g}s; it shows {shown}"
            )
        await asyncio.sleep(0.1)


def assert_shown_firing(alert: dict[str, Any], name: str, labels: dict[str, str]) -> None:
    """The ``GET /alerts`` entry of a firing alert says what the rule and the cause say."""
    rule = RULE[name]
    assert alert["state"] == "firing", alert
    assert alert["labels"] == labels, alert
    assert alert["severity"] == rule.severity and alert["threshold"] == rule.threshold, alert
    assert alert["summary"] == rule.summary, alert
    assert alert["runbook"] == f"docs/monitoring.md#{name.lower()}", alert
    assert alert["since"] is not None and alert["value"] is not None, alert
    assert rule.breached(alert["value"]), alert


def assert_message(message: dict[str, Any], name: str, status: str, labels: dict[str, str]) -> None:
    """An Alertmanager webhook message (version 4) about one alert of this instance."""
    rule = RULE[name]
    expected_labels = {"alertname": name, "severity": rule.severity, "instance": INSTANCE, **labels}
    assert message["version"] == "4", message
    assert message["status"] == status, message
    assert message["receiver"] == "keygen", message
    assert message["groupLabels"] == {"alertname": name}, message
    assert message["commonLabels"] == expected_labels, message
    (alert,) = message["alerts"]
    assert alert["status"] == status, message
    assert alert["labels"] == expected_labels, message
    assert alert["annotations"]["summary"] == rule.summary, message
    assert alert["annotations"]["runbook"] == f"docs/monitoring.md#{name.lower()}", message
    starts = datetime.fromisoformat(alert["startsAt"].replace("Z", "+00:00"))
    if status == "firing":
        assert alert["endsAt"] == "0001-01-01T00:00:00Z", message
    else:
        ends = datetime.fromisoformat(alert["endsAt"].replace("Z", "+00:00"))
        assert ends >= starts, message


async def expect_firing(
    server: ServeProcess,
    receiver: WebhookReceiver,
    name: str,
    labels: dict[str, str] | None = None,
    *,
    after: float,
) -> dict[str, Any]:
    """``name`` fires: ``GET /alerts`` shows it and a "firing" message arrives (sent after
    ``after``, a ``time.monotonic()``); return the /alerts entry."""
    labels = labels or {}
    shown = await alert_until(server.url, name, "firing", labels)
    assert_shown_firing(shown, name, labels)
    message = await receiver.wait_for(name, "firing", labels=labels, after=after, timeout=DEADLINE)
    assert_message(message, name, "firing", labels)
    return shown


async def expect_resolved(
    server: ServeProcess,
    receiver: WebhookReceiver,
    name: str,
    labels: dict[str, str] | None = None,
    *,
    after: float,
) -> None:
    """``name`` resolves: a "resolved" message arrives (sent after ``after``) and
    ``GET /alerts`` no longer shows it pending or firing."""
    labels = labels or {}
    message = await receiver.wait_for(
        name, "resolved", labels=labels, after=after, timeout=DEADLINE
    )
    assert_message(message, name, "resolved", labels)
    await alert_until(server.url, name, "inactive", labels)


async def firing_names(url: str) -> list[str]:
    return [
        a["name"] for a in (await get_json(f"{url}/alerts"))["alerts"] if a["state"] == "firing"
    ]


async def allocate(url: str, namespace: str = "default", size: int = 10) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=15) as http:
        response = await http.post(f"{url}/allocate", json={"size": size, "namespace": namespace})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def served_by(url: str, source: str) -> None:
    """Allocate until ``source`` serves a request (other sources and 503s meanwhile are fine)."""
    deadline = time.monotonic() + DEADLINE
    seen: list[Any] = []
    async with httpx.AsyncClient(timeout=15) as http:
        while time.monotonic() < deadline:
            response = await http.post(f"{url}/allocate", json={"size": 1})
            answer = response.json()
            if response.status_code == 200 and answer["source"] == source:
                return
            seen = [*seen[-4:], (response.status_code, answer.get("source") or answer)]
            await asyncio.sleep(0.1)
    raise AssertionError(f"{source} did not serve within {DEADLINE:g}s; last answers {seen}")


async def test_postgresql_stopped_fires_layer_down_and_error_rate_then_both_resolve(
    controlled_postgres: PostgresNode, postgres_url: str, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    """With the PostgreSQL ledger (direct, no reserve) stopped, KeygenLayerDown{postgresql}
    fires without any traffic and KeygenErrorRateHigh once requests get 503s, and with
    PostgreSQL back both resolve, every transition reaching the webhook as an Alertmanager
    message whose resolved form keeps the alert's startsAt."""
    env = service_env(tmp_path, receiver, **postgres_env(postgres_url), KEYGEN_RESERVE="off")
    layer = {"source": SOURCE_POSTGRESQL}
    async with serving(env, tmp_path / "serve.log") as server:
        assert (await allocate(server.url))["source"] == SOURCE_POSTGRESQL
        assert await firing_names(server.url) == []
        stopped_at = time.monotonic()
        await asyncio.to_thread(controlled_postgres.stop)
        down = await expect_firing(server, receiver, "KeygenLayerDown", layer, after=stopped_at)
        assert down["value"] == 0.0
        async with loading(server.url) as result:
            await wait_until(lambda: result.statuses[503] >= 20, DEADLINE)
            errors = await expect_firing(server, receiver, "KeygenErrorRateHigh", after=stopped_at)
            assert errors["value"] > 0.5, errors  # nearly every request fails
            restarted_at = time.monotonic()
            await asyncio.to_thread(controlled_postgres.start)
            await wait_for_acks(result, len(result.acknowledged) + 50, timeout=DEADLINE)
            await expect_resolved(server, receiver, "KeygenErrorRateHigh", after=restarted_at)
            await expect_resolved(server, receiver, "KeygenLayerDown", layer, after=restarted_at)
    assert set(result.statuses) == {200, 503} and not result.errors, (
        result.statuses,
        result.errors,
    )
    # Alertmanager's resolved message keeps the alert's startsAt (when it began) and adds
    # endsAt; a receiver matches the two messages by labels and startsAt.
    for name, labels in (("KeygenLayerDown", layer), ("KeygenErrorRateHigh", {})):
        fired = receiver.find(name, "firing", labels, after=stopped_at)
        resolved = receiver.find(name, "resolved", labels, after=restarted_at)
        assert fired is not None and resolved is not None
        began, ended = fired["alerts"][0]["startsAt"], resolved["alerts"][0]
        assert ended["startsAt"] == began, (
            f"SERVICE BUG: the resolved message of {name} says startsAt={ended['startsAt']} "
            f"(= its endsAt {ended['endsAt']}), not {began} as its firing message did: "
            "keygen.alerts.Alerts._step sets alert.since = None before _payload() reads it"
        )


async def test_serving_from_the_reserve_fires_serving_and_reserve_low(
    controlled_postgres: PostgresNode, postgres_url: str, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    """With PostgreSQL stopped under load and the emergency reserve on,
    KeygenServingFromReserve and KeygenReserveLow{default} fire and reach the webhook, and
    KeygenServingFromReserve resolves once PostgreSQL serves again."""
    # KeygenReserveLow's resolution is not waited for: at this load a fresh reserve also
    # lasts under 10 minutes, and the rate it is judged by is measured over a fixed minute
    # (reserve_state.RATE_WINDOW, not scaled), so it rightly keeps firing for a minute.
    env = service_env(
        tmp_path,
        receiver,
        **postgres_env(postgres_url),
        KEYGEN_RESERVE="on",
        KEYGEN_RESERVE_SIZE="1000000",
        KEYGEN_RESERVE_NAMESPACES="default",
    )
    low = {"namespace": "default"}
    async with serving(env, tmp_path / "serve.log") as server:

        async def reserve_held() -> bool:
            health = await get_json(f"{server.url}/health")
            return bool(health["reserve"]["namespaces"].get("default", {}).get("remaining"))

        deadline = time.monotonic() + DEADLINE
        while not await reserve_held():
            assert time.monotonic() < deadline, "no emergency reserve held for 'default'"
            await asyncio.sleep(0.1)
        stopped_at = time.monotonic()
        await asyncio.to_thread(controlled_postgres.stop)
        async with loading(server.url, sizes=(100, 100)) as result:
            await wait_until(
                lambda: sum(r.source == SOURCE_RESERVE for r in result.acknowledged) >= 50,
                DEADLINE,
            )
            serving_alert = await expect_firing(
                server, receiver, "KeygenServingFromReserve", after=stopped_at
            )
            assert serving_alert["value"] == 1.0
            reserve_low = await expect_firing(
                server, receiver, "KeygenReserveLow", low, after=stopped_at
            )
            assert 0 < reserve_low["value"] < 600, reserve_low
            restarted_at = time.monotonic()
            await asyncio.to_thread(controlled_postgres.start)
            await wait_until(
                lambda: any(r.source == SOURCE_POSTGRESQL for r in result.acknowledged),
                DEADLINE,
            )
            await expect_resolved(server, receiver, "KeygenServingFromReserve", after=restarted_at)
    assert set(result.statuses) == {200} and not result.errors, (result.statuses, result.errors)


async def test_a_namespace_near_the_end_fires_headroom_low_through_a_retried_webhook(
    tmp_path: Path,
) -> None:
    """A namespace moved near 2^63-1 in the SQLite ledger before start fires
    KeygenHeadroomLow for that namespace alone, and its webhook message arrives unchanged on
    the third attempt when the receiver answers 503 to the first two."""
    # No resolution to wait for: a ledger only moves forward.
    nearly_full, last_id = "nearly-full", MAX_ID - 10**12
    data_dir = tmp_path / "data"
    ledger = await SqliteLedger.open(data_dir)
    try:
        await ledger.advance_to(nearly_full, last_id)
    finally:
        await ledger.aclose()
    labels = {"namespace": nearly_full}
    with WebhookReceiver(fail_first=2) as receiver:
        env = service_env(tmp_path, receiver)
        started_at = time.monotonic()
        async with serving(env, tmp_path / "serve.log") as server:
            served = await allocate(server.url, nearly_full, 1000)
            assert served["start"] == last_id + 1, served
            await allocate(server.url)
            shown = await expect_firing(
                server, receiver, "KeygenHeadroomLow", labels, after=started_at
            )
            assert 0 < shown["value"] <= MAX_ID - last_id < HEADROOM_LOW, shown
            alerts = (await get_json(f"{server.url}/alerts"))["alerts"]
        deliveries = receiver.deliveries
    headroom = [d for d in deliveries if "KeygenHeadroomLow" in d.alertnames]
    assert [d.accepted for d in headroom] == [False, False, True], deliveries
    assert all(d.body == headroom[0].body for d in headroom), "a retry changed the message"
    assert all(d.content_type == "application/json" for d in headroom), headroom
    firing = [(a["name"], a["labels"]) for a in alerts if a["state"] == "firing"]
    assert firing == [("KeygenHeadroomLow", labels)], firing


def _via(url: str, port: int) -> str:
    """``url`` with its port replaced (to go through a proxy on 127.0.0.1)."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))


async def test_a_slow_ledger_fires_latency_high_which_resolves_once_it_is_fast(
    postgres_url: str, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    """With every PostgreSQL round trip delayed 20 ms by a proxy under steady load,
    KeygenLatencyHigh fires only after its (scaled) 5 minutes, and resolves once the delay
    is removed while the load goes on."""
    port = urlsplit(postgres_url).port
    assert port is not None
    with ProxyServer() as proxies:
        proxy = proxies.add("postgres", port)
        env = service_env(
            tmp_path,
            receiver,
            **postgres_env(
                _via(postgres_url, proxy.port),
                ALLOCATION_TIMEOUT="5",
                KEYGEN_DB_COMMAND_TIMEOUT="2",
            ),
            KEYGEN_RESERVE="off",
        )
        async with serving(env, tmp_path / "serve.log") as server, loading(server.url) as result:
            await wait_for_acks(result, 100, timeout=DEADLINE)
            await alert_until(server.url, "KeygenLatencyHigh", "inactive")
            slowed_at = time.monotonic()
            await asyncio.to_thread(proxies.set_mode, "postgres", Mode.DELAY, 0.02)
            shown = await expect_firing(server, receiver, "KeygenLatencyHigh", after=slowed_at)
            assert shown["value"] > 0.02, shown  # a request and its answer, each held 20 ms
            waited, duration = time.monotonic() - slowed_at, RULE["KeygenLatencyHigh"].for_seconds
            assert waited >= duration * TIME_SCALE, f"fired {waited:.1f}s after the slowdown"
            healed_at = time.monotonic()
            await asyncio.to_thread(proxies.set_mode, "postgres", Mode.PASS)
            await expect_resolved(server, receiver, "KeygenLatencyHigh", after=healed_at)
            served_after = len(result.acknowledged)
            await wait_for_acks(result, served_after + 50, timeout=DEADLINE)
    assert set(result.statuses) == {200} and not result.errors, (result.statuses, result.errors)


async def test_a_redis_failover_and_a_dozen_refills_fire_failover_and_too_many_locks(
    cluster: LocalCluster,
    controlled_postgres: PostgresNode,
    postgres_url: str,
    tmp_path: Path,
    receiver: WebhookReceiver,
) -> None:
    """A Redis master killed until Sentinel promotes a replica fires KeygenRedisFailover until
    the failover leaves the rule's window, and 12 namespaces refilling at once from a paused
    PostgreSQL hold 12 lease-refill locks and fire KeygenTooManyLocks until PostgreSQL resumes
    and the locks are released."""
    env = service_env(
        tmp_path,
        receiver,
        **cluster.env(),
        KEYGEN_DATABASE_URL=postgres_url,
        KEYGEN_RESERVE="off",
        ALLOCATION_TIMEOUT="3",
        KEYGEN_REDIS_TIMEOUT="0.5",
        KEYGEN_REDIS_SOCKET_TIMEOUT="0.25",
        KEYGEN_DB_COMMAND_TIMEOUT="5",
    )
    namespaces = [f"lock-{i}" for i in range(12)]
    async with serving(env, tmp_path / "serve.log") as server:
        await served_by(server.url, SOURCE_REDIS)
        assert await firing_names(server.url) == []
        old = cluster.master()
        killed_at = time.monotonic()
        old.kill(signal.SIGKILL)
        new = await asyncio.to_thread(cluster.wait_for_failover, old, 30)
        failover = await expect_firing(server, receiver, "KeygenRedisFailover", after=killed_at)
        assert failover["value"] == 1.0, failover
        health = await get_json(f"{server.url}/health")
        assert health["redis"]["master"] == f"127.0.0.1:{new.port}", health["redis"]
        await served_by(server.url, SOURCE_REDIS)

        paused_at = time.monotonic()
        await asyncio.to_thread(controlled_postgres.pause)
        try:
            async with httpx.AsyncClient(timeout=20) as http:
                refills = [
                    asyncio.create_task(
                        http.post(f"{server.url}/allocate", json={"size": 5, "namespace": ns})
                    )
                    for ns in namespaces
                ]
                locks = await expect_firing(server, receiver, "KeygenTooManyLocks", after=paused_at)
                assert locks["value"] == len(namespaces), locks
                resumed_at = time.monotonic()
                await asyncio.to_thread(controlled_postgres.resume)
                await expect_resolved(server, receiver, "KeygenTooManyLocks", after=resumed_at)
                answers = await asyncio.gather(*refills)
        finally:
            controlled_postgres.resume()
        await expect_resolved(server, receiver, "KeygenRedisFailover", after=killed_at)
    assert {a.status_code for a in answers} <= {200, 503}, [a.text for a in answers]
