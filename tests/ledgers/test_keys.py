"""The API key table of both ledgers: added, listed, revoked; only hashes are kept."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from keygen.auth_tokens import new_key
from keygen.ledgers.base import Ledger
from keygen.ledgers.postgres import PostgresLedger
from keygen.ledgers.sqlite import SqliteLedger
from keygen.rates import Rates
from keygen.requester import REQUESTED_BY

pytestmark = pytest.mark.anyio

SECRET = b"k" * 32


@asynccontextmanager
async def sqlite(tmp_path: Path) -> AsyncIterator[Ledger]:
    ledger = await SqliteLedger.open(tmp_path)
    try:
        yield ledger
    finally:
        await ledger.aclose()


@asynccontextmanager
async def postgres(url: str) -> AsyncIterator[Ledger]:
    ledger = await PostgresLedger.open(url)
    try:
        yield ledger
    finally:
        await ledger.aclose()


async def _keys_round_trip(ledger: Ledger) -> None:
    now = time.time()
    token, first = new_key("billing", ["allocate:orders", "read"], SECRET, now)
    _, second = new_key("ops", ["admin"], SECRET, now + 1)
    await ledger.add_api_key(first)
    await ledger.add_api_key(second)
    listed = await ledger.api_keys()
    assert [k.id for k in listed] == [first.id, second.id]
    assert listed[0].scopes == ("allocate:orders", "read")
    assert listed[0].digest == first.digest and listed[0].secret_id == first.secret_id
    assert abs(listed[0].created_at - now) < 1 and listed[0].revoked_at is None
    assert all(token not in repr(k) for k in listed)
    assert await ledger.revoke_api_key(first.id)
    assert not await ledger.revoke_api_key(first.id)  # already revoked
    assert not await ledger.revoke_api_key("nosuchkey")
    after = {k.id: k for k in await ledger.api_keys()}
    revoked_at = after[first.id].revoked_at
    assert revoked_at is not None and abs(revoked_at - time.time()) < 5
    assert after[second.id].revoked_at is None


async def test_sqlite_keeps_adds_lists_and_revokes_keys(tmp_path: Path) -> None:
    """The SQLite ledger stores keys by hash, lists them in creation order, revokes once."""
    async with sqlite(tmp_path) as ledger:
        await _keys_round_trip(ledger)


async def test_sqlite_keys_survive_reopening(tmp_path: Path) -> None:
    """Keys are in the ledger file: another process opening it sees them."""
    _, record = new_key("a", ["read"], SECRET, time.time())
    async with sqlite(tmp_path) as ledger:
        await ledger.add_api_key(record)
    async with sqlite(tmp_path) as ledger:
        assert [k.id for k in await ledger.api_keys()] == [record.id]


async def test_postgres_keeps_adds_lists_and_revokes_keys(postgres_url: str) -> None:
    """The PostgreSQL ledger (migration 3) does the same as the SQLite one."""
    async with postgres(postgres_url) as ledger:
        await _keys_round_trip(ledger)


async def test_postgres_keys_are_shared_by_every_ledger_on_the_database(postgres_url: str) -> None:
    """A key added through one instance's ledger is listed by another's."""
    _, record = new_key("a", ["read"], SECRET, time.time())
    async with postgres(postgres_url) as one, postgres(postgres_url) as other:
        await one.add_api_key(record)
        assert [k.id for k in await other.api_keys()] == [record.id]


async def _limits_usage_and_requesters(ledger: Ledger) -> None:
    _, limited = new_key("limited", ["allocate:*"], SECRET, time.time(), Rates(5, 1000, 10**12))
    _, free = new_key("free", ["allocate:*"], SECRET, time.time() + 1)
    await ledger.add_api_key(limited)
    await ledger.add_api_key(free)
    listed = {k.id: k.rates for k in await ledger.api_keys()}
    assert {limited.id: listed[limited.id], free.id: listed[free.id]} == {
        limited.id: Rates(5, 1000, 10**12),
        free.id: Rates(),
    }

    await ledger.add_key_usage("2026-12-01", {limited.id: (3, 3000), free.id: (1, 1)})
    await ledger.add_key_usage("2026-12-01", {limited.id: (2, 2000)})
    await ledger.add_key_usage("2026-12-02", {free.id: (7, 70)})
    usage = await ledger.key_usage("2026-12-01")
    assert {(u.day, u.key_id): (u.requests, u.ids) for u in usage} == {
        ("2026-12-01", limited.id): (5, 5000),
        ("2026-12-01", free.id): (1, 1),
        ("2026-12-02", free.id): (7, 70),
    }
    assert [u.day for u in await ledger.key_usage("2026-12-02")] == ["2026-12-02"]

    REQUESTED_BY.set(f"{limited.id} (limited)")
    await ledger.grant("orders", 10, kind="direct", holder="test")
    REQUESTED_BY.set("")
    await ledger.grant("orders", 10, kind="direct", holder="test")
    trail = [g for g in await ledger.grants() if g.namespace == "orders"]
    assert [g.requested_by for g in trail] == [f"{limited.id} (limited)", ""]


async def test_sqlite_keeps_limits_usage_and_who_each_grant_was_for(tmp_path: Path) -> None:
    """Rate limits round-trip, usage adds up per key and day, grants name their key."""
    async with sqlite(tmp_path) as ledger:
        await _limits_usage_and_requesters(ledger)


async def test_sqlite_ledger_made_before_limits_gains_their_columns(tmp_path: Path) -> None:
    """A ledger file from before rate limits opens: the new columns are added, old rows
    read as unlimited and as requested by nobody."""
    db = sqlite3.connect(tmp_path / "ledger.sqlite3")
    db.executescript(
        "CREATE TABLE grants (id INTEGER PRIMARY KEY, namespace TEXT NOT NULL, start_id INTEGER"
        " NOT NULL, end_id INTEGER NOT NULL, kind TEXT NOT NULL, holder TEXT NOT NULL,"
        " granted_at REAL NOT NULL);"
        "INSERT INTO grants VALUES (1, 'old', 1, 10, 'lease', 'h', 0);"
        "CREATE TABLE api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, digest TEXT NOT NULL"
        " UNIQUE, scopes TEXT NOT NULL, secret_id TEXT NOT NULL, created_at REAL NOT NULL,"
        " revoked_at REAL);"
        "INSERT INTO api_keys VALUES ('k1', 'old', 'ab', 'read', 's', 0, NULL);"
    )
    db.close()
    async with sqlite(tmp_path) as ledger:
        assert [k.rates for k in await ledger.api_keys()] == [Rates()]
        assert [g.requested_by for g in await ledger.grants()] == [""]
        await _limits_usage_and_requesters(ledger)


async def test_postgres_keeps_limits_usage_and_who_each_grant_was_for(postgres_url: str) -> None:
    """The same on PostgreSQL (migration 4)."""
    async with postgres(postgres_url) as ledger:
        await _limits_usage_and_requesters(ledger)
