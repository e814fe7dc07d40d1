"""The API key table of both ledgers: added, listed, revoked; only hashes are kept."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from keygen.auth import new_key
from keygen.ledgers.base import Ledger
from keygen.ledgers.postgres import PostgresLedger
from keygen.ledgers.sqlite import SqliteLedger

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
