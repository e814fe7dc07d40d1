"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from keygen.api import create_app
from keygen.api.allocate import AllocateEndpoint
from keygen.cluster.postgres import PostgresNode
from keygen.config import Settings
from tests.support.app import running
from tests.support.postgres import TEST_DATABASE_URL_ENV, PostgresServer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded-default settings on a fresh data dir, ignoring the caller's environment."""
    return Settings(_env_file=None, data_dir=tmp_path / "data", instance_id="test")


@pytest.fixture
def app(settings: Settings) -> AllocateEndpoint:
    return create_app(settings)


@pytest.fixture
async def client(app: AllocateEndpoint) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client wired in-process to the started ``app`` (no sockets)."""
    async with running(app) as http:
        yield http


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session: a private one started here from the installed
    binaries, or the existing one ``KEYGEN_TEST_DATABASE_URL`` names."""
    url = os.environ.get(TEST_DATABASE_URL_ENV)
    server = PostgresServer.external(url) if url else PostgresServer.private()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> Iterator[str]:
    """The URL of a fresh, empty database on the session's server."""
    postgres.ensure_running()
    url = postgres.create_database()
    try:
        yield url
    finally:
        postgres.ensure_running()  # a test that stopped the server must not break the next
        if not postgres.controllable:
            postgres.drop_database(url)


@pytest.fixture
def controlled_postgres(postgres: PostgresServer) -> PostgresNode:
    """The session's server, for tests that stop or crash it (skipped on an external one)."""
    if postgres.node is None:
        pytest.skip(f"{TEST_DATABASE_URL_ENV} names a server this suite does not own")
    return postgres.node
