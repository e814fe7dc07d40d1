"""What operators do to data directories, against real ``keygen serve`` processes: a reserve
journal cut at a record boundary, restored from an earlier copy, or copied from another
instance, with Redis and PostgreSQL down; ``auth.enforced`` deleted with the ledger down; the
embedded ledger deleted. None of it may repeat an ID or serve without a key.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
from pathlib import Path

import httpx
import pytest

from keygen.cluster.postgres import PostgresNode
from keygen.constants import SOURCE_RESERVE
from keygen.dispensers.journal import JOURNAL_NAME
from keygen.errors import ClusterError
from tests.e2e.test_reserve import (
    NAMESPACES,
    acks_from,
    assert_disjoint,
    dead_sentinels,
    health,
    health_until,
    loading,
    reserves_held,
    serving,
)
from tests.e2e.test_reserve import service_env as reserve_env
from tests.support.load import LoadResult, wait_until
from tests.support.processes import ServeProcess, keygen

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


def service_env(tmp_path: Path, postgres_url: str, **extra: str) -> dict[str, str]:
    """The reserve's topology with Redis down; no keys (the reserve is what is tested); a
    reserve small enough that a few hundred requests raise its mark several times."""
    return reserve_env(
        tmp_path,
        postgres_url,
        dead_sentinels(),
        **{
            "KEYGEN_RESERVE_SIZE": "64000",
            # The host's memory-backed directory stands for this host's, kept with the test.
            "KEYGEN_RESERVE_WITNESS_DIR": str(tmp_path / "shm"),
            **extra,
        },
    )


async def refused_everything(url: str) -> list[httpx.Response]:
    """One request per namespace, each expected to be refused."""
    async with httpx.AsyncClient(timeout=10) as http:
        return [
            await http.post(f"{url}/allocate", json={"size": 5, "namespace": namespace})
            for namespace in NAMESPACES
        ]


async def ready_until(url: str, status: int, timeout: float = 20) -> httpx.Response:
    """Poll /health/ready until it answers ``status``; past ``timeout``, fail with the last
    answer seen."""
    deadline = asyncio.get_running_loop().time() + timeout
    seen: httpx.Response | None = None
    async with httpx.AsyncClient(timeout=10) as http:
        while asyncio.get_running_loop().time() < deadline:
            seen = await http.get(f"{url}/health/ready")
            if seen.status_code == status:
                return seen
            await asyncio.sleep(0.1)
    last = None if seen is None else (seen.status_code, seen.text)
    raise AssertionError(f"/health/ready did not answer {status} within {timeout:g} s: {last}")


#: The requests a restarted instance must refuse before a test concludes it serves nothing.
REFUSALS = 50


async def refusals(result: LoadResult, count: int, timeout: float = 20) -> None:
    """Wait until the load has been refused (503) ``count`` times; past ``timeout``, fail
    with what it got instead."""
    try:
        await wait_until(lambda: result.statuses[503] >= count, timeout)
    except TimeoutError:
        raise AssertionError(
            f"not {count} refusals within {timeout:g} s: statuses {dict(result.statuses)}, "
            f"{len(result.acknowledged)} acknowledged, errors {dict(result.errors)}"
        ) from None


async def serve_from_reserve_then_kill(
    server: ServeProcess, postgres: PostgresNode, result: LoadResult, acks: int = 200
) -> None:
    """Take the reserves, stop PostgreSQL, serve ``acks`` ranges from the reserve, kill -9."""
    await health_until(server.url, reserves_held)
    await asyncio.to_thread(postgres.stop)
    async with loading(server.url, result):
        await acks_from(result, SOURCE_RESERVE, acks)
    server.kill(signal.SIGKILL)


async def test_a_journal_cut_at_a_record_boundary_is_never_served_from(
    controlled_postgres: PostgresNode, postgres_url: str, tmp_path: Path
) -> None:
    """kill -9 while serving from the reserve, the journal cut cleanly before its last marks
    (as an earlier snapshot would be), restarted with every layer down: nothing is served
    from it (503 reserve_unavailable); PostgreSQL back, its abandonment is recorded, fresh
    reserves are taken above it, and keygen audit finds nothing."""
    env = service_env(tmp_path, postgres_url)
    log = tmp_path / "serve.log"
    before, after = LoadResult(), LoadResult()
    path = tmp_path / "data" / JOURNAL_NAME.format(0)
    async with serving(env, log) as server:
        await serve_from_reserve_then_kill(server, controlled_postgres, before)
        lines = path.read_bytes().splitlines(keepends=True)
        marks = [i for i, line in enumerate(lines) if b'"type":"mark"' in line]
        assert len(marks) >= 4, "too few marks to cut"
        path.write_bytes(b"".join(lines[: marks[len(marks) // 2]]))  # at a record boundary
        await asyncio.to_thread(server.start)
        refused = await refused_everything(server.url)
        await asyncio.to_thread(controlled_postgres.start)
        async with loading(server.url, after, seed=1):
            refilled = await health_until(
                server.url, lambda d: d["reserve"]["usages_recorded"] >= 2 and reserves_held(d)
            )
    assert [r.status_code for r in refused] == [503, 503]
    assert {r.json()["error"]["code"] for r in refused} == {"reserve_unavailable"}
    assert "is not verified" in log.read_text()
    assert_disjoint(*before.acknowledged, *after.acknowledged)
    for namespace in NAMESPACES:
        served = max(r.end for r in before.acknowledged if r.namespace == namespace)
        assert refilled["reserve"]["namespaces"][namespace]["start"] > served
    audit = keygen("audit", env=env)
    assert audit.returncode == 0, audit.stdout + audit.stderr


async def test_an_older_journal_restored_is_never_served_from(
    controlled_postgres: PostgresNode, postgres_url: str, tmp_path: Path
) -> None:
    """A journal copied while the reserve served, copied back after more was served and the
    process killed (a restored backup of the data dir): the restarted process, every layer
    still down, serves nothing from it, so no ID is handed out twice."""
    env = service_env(tmp_path, postgres_url)
    before, after = LoadResult(), LoadResult()
    data = tmp_path / "data"
    async with serving(env, tmp_path / "serve.log") as server:
        await health_until(server.url, reserves_held)
        await asyncio.to_thread(controlled_postgres.stop)
        async with loading(server.url, before):
            await acks_from(before, SOURCE_RESERVE, 100)
            shutil.copytree(data, tmp_path / "earlier")
            await acks_from(before, SOURCE_RESERVE, 300)
        server.kill(signal.SIGKILL)
        journal = JOURNAL_NAME.format(0)
        (data / journal).write_bytes((tmp_path / "earlier" / journal).read_bytes())
        await asyncio.to_thread(server.start)
        async with loading(server.url, after, seed=1):
            await refusals(after, REFUSALS)  # a replay would have served these
        document = (await health(server.url)).json()
    assert {r.source for r in after.acknowledged} <= {SOURCE_RESERVE}
    assert after.acknowledged == [] and after.statuses[503] > 0
    assert document["reserve"]["ids_wasted"] > 0
    assert_disjoint(*before.acknowledged, *after.acknowledged)


async def test_another_instances_journal_is_never_served_from(
    controlled_postgres: PostgresNode, postgres_url: str, tmp_path: Path
) -> None:
    """Instance r0's journal copied into instance r1's data dir (a volume attached to the wrong
    pod): with every layer down, r0 resumes its own reserve above its mark, and r1 serves
    nothing from the copy; no ID is handed out twice."""
    r0 = service_env(tmp_path / "r0", postgres_url)
    r1 = service_env(tmp_path / "r1", postgres_url, KEYGEN_INSTANCE_ID="r1")
    before, again, copied = LoadResult(), LoadResult(), LoadResult()
    async with serving(r0, tmp_path / "r0.log") as first:
        await serve_from_reserve_then_kill(first, controlled_postgres, before)
        await asyncio.to_thread(controlled_postgres.start)
        async with serving(r1, tmp_path / "r1.log") as second:
            await health_until(second.url, reserves_held)  # r1 has a data dir of its own
            await asyncio.to_thread(controlled_postgres.stop)
            second.kill(signal.SIGKILL)
            journal = JOURNAL_NAME.format(0)
            shutil.copyfile(tmp_path / "r0" / "data" / journal, tmp_path / "r1" / "data" / journal)
            await asyncio.to_thread(first.start)
            await asyncio.to_thread(second.start)
            async with loading(first.url, again), loading(second.url, copied, seed=1):
                await acks_from(again, SOURCE_RESERVE, 100)
                await refusals(copied, REFUSALS)  # a replay would have served these
    assert copied.acknowledged == [] and copied.statuses[503] > 0
    assert "granted to another data dir" in (tmp_path / "r1.log").read_text()
    assert_disjoint(*before.acknowledged, *again.acknowledged, *copied.acknowledged)


async def test_auth_enforced_deleted_with_the_ledger_down_serves_nothing_without_a_key(
    controlled_postgres: PostgresNode, postgres_url: str, tmp_path: Path
) -> None:
    """Keys in the ledger, KEYGEN_AUTH=auto, auth.enforced deleted and PostgreSQL down at
    start: every request without a valid key is refused (503 keys_unavailable, Retry-After),
    /health/ready says so, and the log says no key table was read; PostgreSQL back, a request
    without a key gets a 401 and one with the key is served."""
    env = service_env(tmp_path, postgres_url, KEYGEN_AUTH="auto")
    log = tmp_path / "serve.log"
    created = keygen("keys", "create", "--name", "ops", "--scope", "admin", env=env)
    assert created.returncode == 0, created.stdout + created.stderr
    token = next(w for w in created.stdout.split() if w.startswith("kg_"))
    async with serving(env, log) as server:
        await ready_until(server.url, 200)
        server.kill(signal.SIGKILL)
        (tmp_path / "data" / "auth.enforced").unlink()
        await asyncio.to_thread(controlled_postgres.stop)
        await asyncio.to_thread(server.start)
        refused = await refused_everything(server.url)
        ready = await ready_until(server.url, 503)
        await asyncio.to_thread(controlled_postgres.start)
        await ready_until(server.url, 200)
        async with httpx.AsyncClient(timeout=10) as http:
            anonymous = await http.post(f"{server.url}/allocate", json={"size": 5})
            keyed = await http.post(
                f"{server.url}/allocate",
                json={"size": 5},
                headers={"Authorization": f"Bearer {token}"},
            )
    assert [r.status_code for r in refused] == [503, 503]
    assert {r.json()["error"]["code"] for r in refused} == {"keys_unavailable"}
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
    assert ready.status_code == 503
    assert any(reason.startswith("keys_unavailable") for reason in ready.json()["reasons"])
    text = log.read_text()
    assert "none was read yet" in text and "the last one read stays in force" not in text
    assert (anonymous.status_code, keyed.status_code) == (401, 200)


async def test_the_embedded_ledger_deleted_refuses_to_start(tmp_path: Path) -> None:
    """The embedded default: ledger.sqlite3 deleted beside a kept auth.enforced and ledger.id,
    the next start refuses in one line naming the lost ledger and the way out, rather than
    open the service without keys and restart every counter at 1."""
    env = {"KEYGEN_DATA_DIR": str(tmp_path / "data")}
    created = keygen("keys", "create", "--name", "ops", "--scope", "admin", env=env)
    assert created.returncode == 0, created.stdout + created.stderr
    async with serving(env, tmp_path / "serve.log") as server:
        async with httpx.AsyncClient(timeout=10) as http:
            token = next(w for w in created.stdout.split() if w.startswith("kg_"))
            first = await http.post(
                f"{server.url}/allocate",
                json={"size": 5},
                headers={"Authorization": f"Bearer {token}"},
            )
        server.kill(signal.SIGKILL)
    assert first.status_code == 200 and (tmp_path / "data" / "auth.enforced").exists()
    for name in ("ledger.sqlite3", "ledger.sqlite3-wal", "ledger.sqlite3-shm"):
        (tmp_path / "data" / name).unlink(missing_ok=True)
    again = ServeProcess(env, log=tmp_path / "again.log")
    try:
        with pytest.raises(ClusterError, match="exited while starting"):
            await asyncio.to_thread(again.start)
    finally:
        again.kill(signal.SIGKILL)
    text = (tmp_path / "again.log").read_text()
    assert "is missing" in text and "keygen restore DIR" in text
    assert not (tmp_path / "data" / "ledger.sqlite3").exists()  # not made afresh
