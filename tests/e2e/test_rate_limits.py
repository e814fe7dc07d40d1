"""Rate limits and quotas against real ``keygen serve`` processes: 429 with Retry-After and
the RateLimit headers, nothing allocated for a refused request, a namespace's limits, limits
shared by two instances through a real Redis and falling back to per-process counts when
Redis is down; and who got what: the access log, the audit trail and the usage per key."""

from __future__ import annotations

import itertools
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from keygen.checker import Record, check
from keygen.cluster.topology import LocalCluster
from tests.support.processes import ServeProcess, keygen
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

RATE_LIMIT_HEADERS = (
    "retry-after",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "ratelimit-policy",
    "ratelimit",
)


def create_key(env: dict[str, str], name: str, *options: str) -> tuple[str, str]:
    """(id, token) of a new key with ``options`` (scopes and limits)."""
    done = keygen("keys", "create", "--name", name, *options, "--json", env=env)
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    return str(created["id"]), str(created["token"])


class Tally:
    """Every answer to the requests a test sent: the ranges (for the checker) and the 429s."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.served_by: list[str] = []  # the URL of the instance that served each record
        self.refused: list[httpx.Response] = []

    def post(self, client: httpx.Client, url: str, token: str, size: int, **body: str) -> int:
        response = client.post(
            f"{url}/allocate",
            json={"size": size, **body},
            headers={"Authorization": f"Bearer {token}"} if token else {},
        )
        if response.status_code == 200:
            self.records.append(Record.from_json(response.json()))
            self.served_by.append(url)
        elif response.status_code == 429:
            self.refused.append(response)
        else:
            raise AssertionError(f"{response.status_code}: {response.text}")
        return response.status_code

    @property
    def ids(self) -> int:
        return sum(r.end - r.start + 1 for r in self.records)


def assert_refusals_say_when(refused: list[httpx.Response]) -> None:
    assert refused, "nothing was refused"
    for response in refused:
        assert response.json()["error"]["code"] == "rate_limited"
        missing = [h for h in RATE_LIMIT_HEADERS if h not in response.headers]
        assert not missing, f"429 without {missing}: {dict(response.headers)}"
        assert int(response.headers["retry-after"]) >= 1


def health(url: str, token: str) -> dict[str, object]:
    response = httpx.get(f"{url}/health", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    document: dict[str, object] = response.json()
    return document


@pytest.fixture
def data_env(tmp_path: Path) -> dict[str, str]:
    return {"KEYGEN_DATA_DIR": str(tmp_path / "data")}


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], ServeProcess]]:
    started: list[ServeProcess] = []

    def start(env: dict[str, str]) -> ServeProcess:
        server = ServeProcess(env, log=tmp_path / f"serve-{len(started)}.log").start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_a_key_over_its_limits_gets_429_and_allocates_nothing(
    data_env: dict[str, str], serve: Callable[[dict[str, str]], ServeProcess], tmp_path: Path
) -> None:
    """A burst of 12 on a key allowed 5 requests a second: 5 or 6 served (the second slides),
    the rest refused with when to come back; a key's IDs a day: served up to the quota, then
    429 until midnight UTC. The refused allocated nothing: the counters count the served, and
    the access log, the audit trail and the usage per key name who got them."""
    fast_id, fast = create_key(
        data_env, "fast", "--scope", "allocate:*", "--requests-per-second", "5"
    )
    daily_id, daily = create_key(data_env, "daily", "--scope", "allocate:*", "--ids-per-day", "100")
    _, reader = create_key(data_env, "reader", "--scope", "admin")
    server = serve({**data_env, "KEYGEN_ACCESS_LOG": "true", "KEYGEN_LOG_LEVEL": "info"})
    tally = Tally()
    with httpx.Client(timeout=5) as client:
        statuses = [tally.post(client, server.url, fast, 10) for _ in range(12)]
        assert 5 <= statuses.count(200) <= 6, statuses
        assert_refusals_say_when(tally.refused)
        assert tally.refused[0].headers["ratelimit-policy"] == '"requests_per_second";q=5;w=1'
        assert "API key " + fast_id in tally.refused[0].json()["error"]["message"]

        before = len(tally.refused)
        assert [tally.post(client, server.url, daily, 30) for _ in range(4)] == [200] * 3 + [429]
        assert tally.post(client, server.url, daily, 10) == 200  # exactly the 100 a day
        assert tally.post(client, server.url, daily, 1) == 429
        day = tally.refused[before:]
        assert_refusals_say_when(day)
        midnight = 86_400 - time.time() % 86_400
        assert abs(int(day[-1].headers["retry-after"]) - midnight) <= 5
        assert day[-1].headers["ratelimit-remaining"] == "0"

        metrics = client.get(
            f"{server.url}/metrics", headers={"Authorization": f"Bearer {reader}"}
        ).json()
    assert metrics["metrics"]["total_allocations"] == len(tally.records)
    assert check(tally.records).ok
    served = [(r.start, r.end) for r in tally.records]
    assert served == sorted(served) and all(
        b[0] == a[1] + 1 for a, b in itertools.pairwise(served)
    ), "a refused request allocated IDs in between"
    assert health(server.url, reader)["rate_limits"] == {
        "mode": "per_process",
        "reason": "no Redis configured",
        "namespace_rules": 0,
        "keys_limited": 2,
        "refused": len(tally.refused),
    }
    log = server.log_path.read_text()
    assert f"to {fast_id} (fast)" in log and f"to {daily_id} (daily)" in log
    server.stop()  # its usage per key is added to the ledger on the way out

    ledger = sqlite3.connect(Path(data_env["KEYGEN_DATA_DIR"]) / "ledger.sqlite3")
    (requested_by,) = ledger.execute("SELECT requested_by FROM grants ORDER BY id").fetchone()
    assert requested_by == f"{fast_id} (fast)"  # the request that caused the lease
    usage = json.loads(keygen("ledger", "status", "--keys", "--json", env=data_env).stdout)
    by_key = {row["key_id"]: (row["name"], row["requests"], row["ids"]) for row in usage}
    fast_served = statuses.count(200)
    assert by_key == {fast_id: ("fast", fast_served, 10 * fast_served), daily_id: ("daily", 4, 100)}


def test_a_namespace_over_its_limits_gets_429(
    data_env: dict[str, str], serve: Callable[[dict[str, str]], ServeProcess]
) -> None:
    """KEYGEN_NAMESPACE_LIMITS with no keys at all: the namespace's own limit."""
    server = serve({**data_env, "KEYGEN_NAMESPACE_LIMITS": "orders:ids_per_second=50"})
    tally = Tally()
    with httpx.Client(timeout=5) as client:
        assert tally.post(client, server.url, "", 50, namespace="orders") == 200
        assert tally.post(client, server.url, "", 1, namespace="orders") == 429
        for _ in range(20):
            assert tally.post(client, server.url, "", 100, namespace="default") == 200
        assert tally.post(client, server.url, "", 51, namespace="orders") == 429
    assert_refusals_say_when(tally.refused)
    assert "namespace 'orders'" in tally.refused[0].json()["error"]["message"]
    assert "ask for at most 50" in tally.refused[1].json()["error"]["message"]
    assert check(tally.records).ok


def test_limits_are_shared_through_redis_and_per_process_while_it_is_down(
    cluster: LocalCluster,
    data_env: dict[str, str],
    serve: Callable[[dict[str, str]], ServeProcess],
) -> None:
    """Two instances on one Sentinel topology: a key's 2,000 IDs a day hold for both
    together (requests alternating between them), not 2,000 each. With every Redis node
    killed, allocation goes on (from the Redis segments on hand, then SQLite), /health says
    the limits are per process, and each instance counts on its own."""
    env = {**cluster.env(), **data_env}
    _, shared = create_key(env, "shared", "--scope", "allocate:*", "--ids-per-day", "2000")
    _, later = create_key(env, "later", "--scope", "allocate:*", "--ids-per-day", "500")
    _, reader = create_key(env, "reader", "--scope", "admin")
    first, second = serve(env), serve(env)
    tally = Tally()
    with httpx.Client(timeout=5) as client:
        for index in range(40):
            server = (first, second)[index % 2]
            tally.post(client, server.url, shared, 100)
            time.sleep(0.05)
        served = len(tally.records)
        assert 20 <= served <= 23, f"{served} of 40 served: the quota was not shared"
        assert {r.source for r in tally.records} == {"redis_sentinel"}
        assert set(tally.served_by) == {first.url, second.url}
        for server in (first, second):
            limits = health(server.url, reader)["rate_limits"]
            assert isinstance(limits, dict) and limits["mode"] == "shared", limits

        for node in cluster.redis_nodes:
            node.kill()
        for server in (first, second):
            tally.post(client, server.url, later, 100)
        for server in (first, second):

            def per_process(url: str = server.url) -> bool:
                limits = health(url, reader)["rate_limits"]
                return isinstance(limits, dict) and limits["mode"] == "per_process"

            wait_for(per_process, 10, f"{server.url} to say its limits are per process")
            limits = health(server.url, reader)["rate_limits"]
            assert isinstance(limits, dict) and "Redis unreachable" in str(limits["reason"])
        before = len(tally.records)
        for index in range(14):
            tally.post(client, (first, second)[index % 2].url, later, 100)
        # 5 of 500 each, 2 of them sent before the instances noticed; still refused: the
        # shared quota's last known count.
        assert len(tally.records) - before == 8
        assert tally.post(client, first.url, shared, 100) == 429
    assert check(tally.records).ok
