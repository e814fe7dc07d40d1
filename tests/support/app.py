"""Run the ASGI app in-process, lifespan included, behind an httpx client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from keygen.api.allocate import AllocateEndpoint


@asynccontextmanager
async def running(app: AllocateEndpoint) -> AsyncIterator[httpx.AsyncClient]:
    """Start the app's lifespan and yield a client talking to it through ASGITransport."""
    async with app.api.router.lifespan_context(app.api):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://keygen") as http:
            yield http
