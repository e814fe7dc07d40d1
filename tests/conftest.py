"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from keygen.api import create_app
from keygen.api.allocate import AllocateEndpoint
from keygen.config import Settings
from tests.support.app import running


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
