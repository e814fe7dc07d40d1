"""``GET /dashboard`` and the assets it and ``/docs`` need, all served from the package.

The page and Swagger UI load nothing from another origin: uPlot and swagger-ui-dist are
vendored under ``static/vendor/`` with their licences (``static/vendor/README.md`` says where
each file came from), so both work on a machine with no way out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

__all__ = ["STATIC_DIR", "router"]

STATIC_DIR: Final = Path(__file__).parent / "static"
STATIC_PREFIX: Final = "/static"

# Relative URLs: /docs and /dashboard also work behind a proxy that serves them under a prefix.
_SWAGGER: Final = "static/vendor/swagger-ui"
# Revalidated on every load (a 304 while unchanged), so an upgrade's page is never stale.
_CACHE_CONTROL: Final = "no-cache"

# The browser itself refuses anything the page would load from another origin.
_DASHBOARD_CSP: Final = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'none'"
)

# Starlette's lookup resolves symlinks and ``..`` and refuses anything outside the folder.
_static = StaticFiles(directory=STATIC_DIR)

router = APIRouter()


async def _static_file(path: str, request: Request) -> Response:
    response = await _static.get_response(path, request.scope)
    response.headers["Cache-Control"] = _CACHE_CONTROL
    return response


@router.get(
    "/dashboard",
    summary="A page of live charts: rates, latency, layers, Redis failovers, alerts, ledger",
    response_class=HTMLResponse,
)
async def dashboard(request: Request) -> Response:
    """The dashboard; it polls ``/metrics/history``, ``/health``, ``/alerts`` and ``/ledger``
    once a second, and every asset it loads comes from ``/static``."""
    response = await _static_file("dashboard.html", request)
    response.headers["Content-Security-Policy"] = _DASHBOARD_CSP
    return response


@router.api_route(
    f"{STATIC_PREFIX}/{{path:path}}", methods=["GET", "HEAD"], include_in_schema=False
)
async def static_file(path: str, request: Request) -> Response:
    """A file of the package's ``static`` folder; 404 for anything else."""
    return await _static_file(path, request)


@router.get("/docs", include_in_schema=False)
async def docs(request: Request) -> HTMLResponse:
    """Swagger UI from the vendored bundle (FastAPI's own ``/docs`` loads it from a CDN)."""
    return get_swagger_ui_html(
        openapi_url=request.app.openapi_url.lstrip("/"),
        title="Keygen API",
        swagger_js_url=f"{_SWAGGER}/swagger-ui-bundle.js",
        swagger_css_url=f"{_SWAGGER}/swagger-ui.css",
        swagger_favicon_url="static/favicon.svg",
        # The online validator badge would fetch an image from validator.swagger.io.
        swagger_ui_parameters={"validatorUrl": None},
    )
