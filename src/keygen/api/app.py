"""The ASGI application: the allocate endpoint in front of a FastAPI app for the rest."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from keygen import __version__
from keygen.api import dashboard
from keygen.api.allocate import AllocateEndpoint
from keygen.api.openapi import install_openapi
from keygen.api.responses import error_response, json_error
from keygen.api.routes import router
from keygen.config import Settings
from keygen.errors import InvalidRequest, KeygenError, MethodNotAllowed, NotFound, ServiceError
from keygen.service import Keygen

log = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(api: FastAPI) -> AsyncIterator[None]:
    """Start the service before the first request; close it after the last."""
    try:
        service = await Keygen.start(api.state.settings)
    except KeygenError as exc:
        api.state.startup_error = str(exc)  # for the one line the endpoint logs instead
        raise
    api.state.service = service
    endpoint: AllocateEndpoint = api.state.endpoint
    endpoint.service = service
    log.info(
        "keygen %s serving from %s",
        __version__,
        " -> ".join(layer.source for layer in service.allocator.layers),
    )
    try:
        yield
    finally:
        endpoint.service = None
        await service.aclose()


def _refused(request: Request, exc: ServiceError) -> Response:
    service = getattr(request.app.state, "service", None)
    if service is not None:
        service.counters.record_rejected(exc.code)
    return error_response(exc)


async def _keygen_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return _refused(request, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _refused(request, NotFound(f"no such path: {request.url.path}"))
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "")
        return _refused(request, MethodNotAllowed(f"{request.method} is not allowed here", allow))
    return json_error(exc.status_code, "http_error", str(exc.detail), exc.headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    messages = "; ".join(
        f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in exc.errors()
    )
    return _refused(request, InvalidRequest(messages))


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(ServiceError("internal error"))


def create_app(settings: Settings | None = None) -> AllocateEndpoint:
    """Build the application; nothing connects until its lifespan starts."""
    api = FastAPI(
        title="Keygen",
        version=__version__,
        description="Unique integer ID ranges, never handed out twice.",
        lifespan=lifespan,
        docs_url=None,  # served by dashboard.py from vendored Swagger UI, not from a CDN
        redoc_url=None,
        # No redirect from /health/ to /health: its Location would come from the client's Host.
        redirect_slashes=False,
    )
    api.state.settings = settings or Settings()
    api.include_router(router)
    api.include_router(dashboard.router)
    api.add_exception_handler(ServiceError, _keygen_error)
    api.add_exception_handler(HTTPException, _http_error)
    api.add_exception_handler(RequestValidationError, _validation_error)
    api.add_exception_handler(Exception, _unexpected_error)
    install_openapi(api)
    # The lifespan hands it the running service.
    endpoint = api.state.endpoint = AllocateEndpoint(api)
    return endpoint
