"""The PostgreSQL ledger against a real server (the session's private one)."""

from __future__ import annotations

import asyncio
import random
import time

import asyncpg
import pytest

from keygen.audit import audit_ledger
from keygen.checker import Record, check
from keygen.cluster.postgres import PostgresNode, with_database
from keygen.constants import GRANT_DIRECT, GRANT_LEASE, GRANT_RESERVE, MAX_ID
from keygen.errors import LedgerUnavailable, NamespaceExhausted, TooManyNamespaces
from keygen.ledgers.base import ReserveMark, ReserveUsage
from keygen.ledgers.postgres import PostgresLedger, is_transient
from keygen.ledgers.postgres_migrations import LATEST_VERSION, MIGRATIONS, migrate
from keygen.ledgers.retention import prune
from keygen.redact import redact_url
from tests.support.postgres import connection, opened
from tests.support.processes import free_port

pytestmark = pytest.mark.anyio


async def test_grants_are_consecutive_per_namespace_from_one(postgres_url: str) -> None:
    """Grants of a namespace follow each other from ID 1; namespaces are independent."""
    async with opened(postgres_url) as ledger:
        first = await ledger.grant("default", 10, kind=GRANT_DIRECT, holder="a")
        second = await ledger.grant("default", 5, kind=GRANT_DIRECT, holder="a")
        other = await ledger.grant("orders", 3, kind=GRANT_LEASE, holder="b")
    assert (first.start, first.end) == (1, 10)
    assert (second.start, second.end) == (11, 15)
    assert (other.namespace, other.start, other.end) == ("orders", 1, 3)


async def test_every_grant_is_recorded_in_the_audit_trail(postgres_url: str) -> None:
    """Each grant leaves one audit row with its namespace, span, kind and holder."""
    async with opened(postgres_url) as ledger:
        await ledger.grant("default", 10, kind=GRANT_DIRECT, holder="host-1")
        await ledger.grant("default", 7, kind=GRANT_LEASE, holder="host-2")
    async with connection(postgres_url) as conn:
        rows = await conn.fetch(
            "SELECT namespace, start_id, end_id, kind, holder, granted_at IS NOT NULL"
            " FROM keygen_grants ORDER BY start_id"
        )
    assert [tuple(row) for row in rows] == [
        ("default", 1, 10, "direct", "host-1", True),
        ("default", 11, 17, "lease", "host-2", True),
    ]


async def test_a_grant_that_would_pass_the_maximum_is_refused(postgres_url: str) -> None:
    """Near 2**63-1 a grant that does not fit raises NamespaceExhausted with the exact
    remainder, and one that fits exactly ends at 2**63-1."""
    async with opened(postgres_url) as ledger:
        await ledger.advance_to("default", MAX_ID - 5)
        with pytest.raises(NamespaceExhausted) as refused:
            await ledger.grant("default", 6, kind=GRANT_DIRECT, holder="a")
        assert (refused.value.requested, refused.value.remaining) == (6, 5)
        last = await ledger.grant("default", 5, kind=GRANT_DIRECT, holder="a")
        assert (last.start, last.end) == (MAX_ID - 4, MAX_ID)
        with pytest.raises(NamespaceExhausted) as empty:
            await ledger.grant("default", 1, kind=GRANT_DIRECT, holder="a")
        assert empty.value.remaining == 0
        with pytest.raises(NamespaceExhausted) as huge:
            await ledger.grant("fresh", MAX_ID + 1, kind=GRANT_DIRECT, holder="a")
        assert huge.value.remaining == MAX_ID
        (status,) = [s for s in await ledger.status() if s.namespace == "default"]
    assert status.last_id == MAX_ID and status.grants == 1  # refusals granted nothing


async def test_advance_to_only_moves_forward(postgres_url: str) -> None:
    """advance_to raises the counter, never lowers it, and returns where it stands."""
    async with opened(postgres_url) as ledger:
        assert await ledger.advance_to("default", 100) == 100
        assert await ledger.advance_to("default", 40) == 100
        granted = await ledger.grant("default", 1, kind=GRANT_DIRECT, holder="a")
        assert granted.start == 101
        with pytest.raises(ValueError):
            await ledger.advance_to("default", MAX_ID + 1)


async def test_status_reports_namespaces_next_ids_and_grants(postgres_url: str) -> None:
    """status lists every namespace by name with its next ID, headroom and grant count."""
    async with opened(postgres_url) as ledger:
        await ledger.grant("orders", 10, kind=GRANT_DIRECT, holder="a")
        await ledger.grant("orders", 10, kind=GRANT_DIRECT, holder="a")
        await ledger.grant("default", 1, kind=GRANT_DIRECT, holder="a")
        statuses = await ledger.status()
    assert [(s.namespace, s.next_id, s.grants) for s in statuses] == [
        ("default", 2, 1),
        ("orders", 21, 2),
    ]
    assert statuses[1].headroom == MAX_ID - 20


async def test_status_of_a_database_never_migrated_is_empty(postgres_url: str) -> None:
    """An inspecting ledger (migrate=False) on an empty database reports no namespace and
    creates nothing."""
    ledger = PostgresLedger(postgres_url, migrate=False)
    try:
        assert await ledger.status() == []
    finally:
        await ledger.aclose()
    async with connection(postgres_url) as conn:
        assert await conn.fetchval("SELECT to_regclass('keygen_schema_version')") is None


async def test_concurrent_grants_from_two_instances_are_disjoint(postgres_url: str) -> None:
    """Hundreds of concurrent grants from two ledgers (two pools) on one database never
    overlap, and together they account for the counter exactly."""
    rng = random.Random(7)
    async with (
        opened(postgres_url, pool_max_size=5) as one,
        opened(postgres_url, pool_max_size=5) as two,
    ):
        sizes = [rng.randint(1, 1000) for _ in range(400)]
        granted = await asyncio.gather(
            *(
                (one if i % 2 else two).grant(
                    "default", size, kind=GRANT_DIRECT, holder=f"h{i % 2}"
                )
                for i, size in enumerate(sizes)
            )
        )
        (status,) = await one.status()
    verdict = check(Record.of(r, requested=size) for r, size in zip(granted, sizes, strict=True))
    assert verdict.ok, verdict.summary()
    assert status.last_id == sum(sizes) and status.grants == len(sizes)


async def test_grants_commit_synchronously_even_if_the_default_is_off(postgres_url: str) -> None:
    """With the database's default synchronous_commit off, a grant's own transaction still
    writes with it on (seen by a trigger inside that transaction)."""
    async with connection(postgres_url) as conn:
        database = await conn.fetchval("SELECT current_database()")
        await conn.execute(f'ALTER DATABASE "{database}" SET synchronous_commit = off')
    async with opened(postgres_url) as ledger:
        async with connection(postgres_url) as conn:
            assert await conn.fetchval("SHOW synchronous_commit") == "off"  # the default
            await conn.execute("""
                CREATE TABLE seen (setting text NOT NULL);
                CREATE FUNCTION record_setting() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    INSERT INTO seen VALUES (current_setting('synchronous_commit'));
                    RETURN NULL;
                END $$;
                CREATE TRIGGER record_setting AFTER INSERT ON keygen_grants
                    FOR EACH ROW EXECUTE FUNCTION record_setting();
            """)
            await ledger.grant("default", 10, kind=GRANT_DIRECT, holder="a")  # new namespace
            await ledger.grant("default", 10, kind=GRANT_DIRECT, holder="a")
            seen = [row[0] for row in await conn.fetch("SELECT setting FROM seen")]
            await conn.execute(  # a plain insert, with the default in force
                "INSERT INTO keygen_grants (namespace, start_id, end_id, kind, holder)"
                " VALUES ('control', 1, 1, 'direct', 'test')"
            )
            control = await conn.fetchval("SELECT setting FROM seen OFFSET 2")
    assert seen == ["on", "on"]
    assert control == "off"  # so the trigger would have seen a grant that did not set it


async def test_migrations_run_twice_without_harm(postgres_url: str) -> None:
    """Running the migrations again changes nothing: same version, same data."""
    async with opened(postgres_url) as ledger:
        await ledger.grant("default", 10, kind=GRANT_DIRECT, holder="a")
        assert ledger.schema_version == LATEST_VERSION
    async with opened(postgres_url) as again:
        assert again.schema_version == LATEST_VERSION
        granted = await again.grant("default", 1, kind=GRANT_DIRECT, holder="a")
    assert granted.start == 11
    async with connection(postgres_url) as conn:
        assert await migrate(conn) == LATEST_VERSION
        versions = [
            row[0]
            for row in await conn.fetch(
                "SELECT version FROM keygen_schema_version ORDER BY version"
            )
        ]
    assert versions == [m.version for m in MIGRATIONS]


async def test_concurrent_migrations_apply_each_version_once(postgres_url: str) -> None:
    """Eight instances migrating an empty database at the same moment all succeed, and each
    migration is applied exactly once (the advisory lock serialises them)."""
    conns = await asyncio.gather(*(asyncpg.connect(postgres_url) for _ in range(8)))
    try:
        versions = await asyncio.gather(*(migrate(conn) for conn in conns))
        rows = await conns[0].fetch("SELECT version FROM keygen_schema_version")
    finally:
        await asyncio.gather(*(conn.close() for conn in conns))
    assert versions == [LATEST_VERSION] * 8
    assert sorted(row[0] for row in rows) == [m.version for m in MIGRATIONS]


async def test_a_schema_newer_than_the_code_refuses_to_start(postgres_url: str) -> None:
    """A database migrated by a newer Keygen makes open() fail, saying why."""
    async with opened(postgres_url):
        pass
    async with connection(postgres_url) as conn:
        await conn.execute(
            "INSERT INTO keygen_schema_version (version, description) VALUES ($1, 'future')",
            LATEST_VERSION + 1,
        )
    with pytest.raises(LedgerUnavailable, match="newer than this Keygen"):
        await PostgresLedger.open(postgres_url)


async def test_a_role_without_create_privilege_can_run_once_migrated(
    controlled_postgres: PostgresNode, postgres_url: str
) -> None:
    """After the owner migrated, a role with only SELECT, INSERT and UPDATE on the ledger's
    tables starts (migrations find nothing to do) and grants."""
    async with opened(postgres_url):
        pass
    role = f"keygen_app_{free_port()}"
    async with connection(postgres_url) as conn:
        await conn.execute(f"""
            CREATE ROLE {role} LOGIN;
            REVOKE CREATE ON SCHEMA public FROM PUBLIC;
            GRANT SELECT, INSERT, UPDATE
                ON keygen_counters, keygen_grants, keygen_schema_version TO {role};
        """)
    url = postgres_url.replace("postgres@", f"{role}@", 1)
    async with opened(url) as ledger:
        granted = await ledger.grant("default", 3, kind=GRANT_DIRECT, holder="a")
    assert (granted.start, granted.end) == (1, 3)
    async with connection(url) as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # the role really is limited
            await conn.execute("CREATE TABLE probe (x int)")


@pytest.mark.parametrize(
    ("change", "meaning"),
    [
        ({"database": "no_such_database"}, "does not exist"),
        ({"user": "no_such_role"}, "refused the credentials"),
        ({"scheme": "mysql"}, "invalid KEYGEN_DATABASE_URL"),
    ],
)
async def test_a_misconfigured_ledger_fails_to_open(
    postgres_url: str, change: dict[str, str], meaning: str
) -> None:
    """A wrong database, role or URL fails open() clearly instead of waiting forever."""
    url = postgres_url
    if "database" in change:
        url = with_database(url, change["database"])
    if "user" in change:
        url = url.replace("postgres@", f"{change['user']}@", 1)
    if "scheme" in change:
        url = url.replace("postgresql://", f"{change['scheme']}://", 1)
    with pytest.raises(LedgerUnavailable, match=meaning) as failed:
        await PostgresLedger.open(url)
    assert not is_transient(failed.value.__cause__)


async def test_an_unreachable_server_is_a_clean_error_not_a_failed_start() -> None:
    """With nothing listening, open() still returns, and every operation raises
    LedgerUnavailable promptly (never a driver error, never a hang)."""
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/keygen"
    async with opened(url, connect_timeout=1.0) as ledger:
        started = time.monotonic()
        for operation in (
            ledger.grant("default", 1, kind=GRANT_DIRECT, holder="a"),
            ledger.advance_to("default", 10),
            ledger.status(),
            ledger.ping(),
        ):
            with pytest.raises(LedgerUnavailable, match="cannot reach the server"):
                await operation
        assert time.monotonic() - started < 4
        assert ledger.snapshot().connected is False
        assert "cannot reach" in (ledger.snapshot().last_error or "")


async def test_a_ledger_started_while_the_server_is_down_connects_when_it_returns(
    controlled_postgres: PostgresNode, postgres_url: str
) -> None:
    """Started with PostgreSQL stopped, the ledger fails cleanly, then migrates and grants
    as soon as the server is back, without being reopened."""
    controlled_postgres.stop()
    try:
        ledger = await PostgresLedger.open(postgres_url, connect_timeout=1.0)
        with pytest.raises(LedgerUnavailable):
            await ledger.grant("default", 1, kind=GRANT_DIRECT, holder="a")
    finally:
        controlled_postgres.start()
    try:
        granted = await ledger.grant("default", 5, kind=GRANT_DIRECT, holder="a")
        assert (granted.start, granted.end) == (1, 5)
        assert ledger.schema_version == LATEST_VERSION
    finally:
        await ledger.aclose()


async def test_a_server_restart_costs_no_failed_grant(
    controlled_postgres: PostgresNode, postgres_url: str
) -> None:
    """After PostgreSQL restarts, the pool's dead connections are replaced and the next
    grant succeeds, continuing the sequence."""
    async with opened(postgres_url, pool_min_size=3, pool_max_size=3) as ledger:
        await asyncio.gather(
            *(ledger.grant("default", 10, kind=GRANT_DIRECT, holder="a") for _ in range(6))
        )  # several pooled connections are open now
        controlled_postgres.stop()
        controlled_postgres.start()
        granted = await ledger.grant("default", 1, kind=GRANT_DIRECT, holder="a")
        more = await asyncio.gather(
            *(ledger.grant("default", 1, kind=GRANT_DIRECT, holder="a") for _ in range(6))
        )
    assert granted.start == 61
    assert sorted(r.start for r in more) == list(range(62, 68))


async def test_a_grant_stuck_on_a_lock_times_out_cleanly(postgres_url: str) -> None:
    """A grant blocked longer than the command timeout raises LedgerUnavailable on time, and
    the ledger works again once the blocker is gone."""
    async with opened(postgres_url, command_timeout=0.5) as ledger:
        await ledger.grant("default", 1, kind=GRANT_DIRECT, holder="a")
        async with connection(postgres_url) as blocker:
            transaction = blocker.transaction()
            await transaction.start()
            await blocker.execute("SELECT * FROM keygen_counters FOR UPDATE")
            started = time.monotonic()
            with pytest.raises(LedgerUnavailable, match="timed out"):
                await ledger.grant("default", 1, kind=GRANT_DIRECT, holder="a")
            assert time.monotonic() - started < 2
            await transaction.rollback()
        granted = await ledger.grant("default", 1, kind=GRANT_DIRECT, holder="a")
    assert granted.start >= 2  # the timed-out grant may have committed: wasted, not reused


async def test_ping_and_snapshot_report_the_connection(postgres_url: str) -> None:
    """ping measures latency; the snapshot shows pool and schema without the password."""
    async with opened(postgres_url) as ledger:
        await ledger.ping()
        snapshot = ledger.snapshot()
    assert snapshot.connected is True and snapshot.schema_version == LATEST_VERSION
    assert snapshot.ping_ms is not None and snapshot.ping_ms > 0
    assert snapshot.pool_max_size == 10 and snapshot.last_error is None


def test_redact_url_hides_only_the_password() -> None:
    """Passwords never reach logs or status output; the rest of the URL does."""
    assert redact_url("postgresql://u:s3cret@db:5432/k?sslmode=require") == (
        "postgresql://u:***@db:5432/k?sslmode=require"
    )
    assert redact_url("postgresql://u@db/k") == "postgresql://u@db/k"


async def test_namespaces_past_the_bound_are_refused_even_from_many_instances(
    postgres_url: str,
) -> None:
    """Several ledgers creating namespaces at once never pass max_namespaces together: the
    creations past it get TooManyNamespaces, with no counter and no audit row left."""
    ledgers = [await PostgresLedger.open(postgres_url, max_namespaces=5) for _ in range(3)]
    try:

        async def create(i: int) -> str:
            try:
                await ledgers[i % 3].grant(f"ns-{i}", 1, kind=GRANT_LEASE, holder="h")
            except TooManyNamespaces:
                return "refused"
            return "granted"

        outcomes = await asyncio.gather(*(create(i) for i in range(20)))
        statuses = await ledgers[0].status()
        rows = await ledgers[0].grants()
        existing = statuses[0].namespace  # an existing namespace is still served
        assert (await ledgers[1].grant(existing, 1, kind=GRANT_LEASE, holder="h")).start == 2
    finally:
        for ledger in ledgers:
            await ledger.aclose()
    assert outcomes.count("granted") == 5 and outcomes.count("refused") == 15
    assert len(statuses) == 5 and len(rows) == 5


async def test_retention_prunes_old_grant_rows_but_never_the_evidence(postgres_url: str) -> None:
    """Old rows are pruned in batches, except each namespace's latest grant and every reserve
    grant; counters are untouched, and a reserve's usage still finds its grant."""
    async with opened(postgres_url) as ledger:
        for _ in range(250):
            await ledger.grant("a", 10, kind=GRANT_LEASE, holder="h")
        reserve = await ledger.grant("a", 10, kind=GRANT_RESERVE, holder="h/reserve-0")
        await ledger.grant("b", 10, kind=GRANT_DIRECT, holder="h")
        await ledger.grant("a", 10, kind=GRANT_DIRECT, holder="h")
        async with connection(postgres_url) as conn:
            await conn.execute("UPDATE keygen_grants SET granted_at = now() - interval '100 days'")
        before = {s.namespace: s.last_id for s in await ledger.status()}
        deleted = await prune(ledger.prune_batch, time.time() - 90 * 86400, batch=64)
        kept = await ledger.grants()
        after = {s.namespace: s.last_id for s in await ledger.status()}
        usage = ReserveUsage("a", reserve.start, reserve.end, reserve.start - 1, "h/reserve-0")
        assert await ledger.record_reserve_usage(usage)
    assert deleted == 250
    assert [(g.namespace, g.kind) for g in kept] == [
        ("a", GRANT_RESERVE),
        ("b", GRANT_DIRECT),
        ("a", GRANT_DIRECT),
    ]
    assert after == before


async def test_reserve_marks_are_kept_per_session_and_raise_the_counter(postgres_url: str) -> None:
    """Each session's mark of a reserve is kept (only ever raised), the highest mark of the
    other sessions is returned, the counter is raised to the reserve's end, and the audit
    sees two sessions' spans that share IDs."""
    async with opened(postgres_url) as ledger:
        reserve = await ledger.grant("a", 1000, kind=GRANT_RESERVE, holder="h/reserve-0")
        span = ("a", reserve.start, reserve.end)
        first = ReserveMark(*span, "s1", "d", "h/reserve-0", reserve.start, reserve.start + 99)
        assert await ledger.record_reserve_mark(first) == reserve.start - 1
        lower = ReserveMark(*span, "s1", "d", "h/reserve-0", reserve.start, reserve.start + 9)
        assert await ledger.record_reserve_mark(lower) == reserve.start - 1
        copy = ReserveMark(*span, "s2", "d", "h/reserve-0", reserve.start + 50, reserve.start + 60)
        assert await ledger.record_reserve_mark(copy) == reserve.start + 99
        async with connection(postgres_url) as conn:
            await conn.execute("UPDATE keygen_counters SET last_id = 0")  # an older backup
        await ledger.record_reserve_mark(copy)
        counters = {s.namespace: s.last_id for s in await ledger.status()}
        marks = await ledger.reserve_marks()
        verdict = await audit_ledger(ledger)
    assert [(m.session, m.mark) for m in marks] == [
        ("s1", reserve.start + 99),
        ("s2", reserve.start + 60),
    ]
    assert counters["a"] == reserve.end
    assert [v.kind for v in verdict.violations] == ["reserve_replayed"]
