"""``/dashboard`` and ``/docs`` load only from the service itself: in-process checks of the
static files, then a real headless Chromium against a live ``keygen serve``."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, Playwright, ViewportSize, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from keygen.api.dashboard import STATIC_DIR
from keygen.constants import MAX_ID
from keygen.ledgers.sqlite import SqliteLedger
from tests.support.processes import ServeProcess

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT_DIR_ENV = "KEYGEN_SCREENSHOT_DIR"
VIEWPORT: ViewportSize = {"width": 1400, "height": 900}
#: How long the page may take to show what it should (it polls once a second).
PAGE_DEADLINE_MS = 20_000
#: The headroom probe asks the ledger every 10 probes, a probe a second.
ALERT_DEADLINE_MS = 25_000
NEARLY_FULL = "nearly-full"
VENDORED = {
    "uplot": ("uPlot.iife.min.js", "uPlot.min.css", "LICENSE"),
    "swagger-ui": ("swagger-ui-bundle.js", "swagger-ui.css", "LICENSE", "NOTICE"),
}
_URL_ATTRIBUTE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']*)["']""")
_JS_URL = re.compile(r"""url:\s*'([^']*)'""")


# ---- in process: what the service serves -------------------------------------------------


@pytest.mark.anyio
async def test_dashboard_page_names_only_its_own_assets(client: httpx.AsyncClient) -> None:
    """/dashboard is HTML whose every asset is a relative URL the service serves, under a CSP
    that lets the browser load nothing from another origin."""
    response = await client.get("/dashboard")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in response.headers["content-security-policy"]
    urls = _URL_ATTRIBUTE.findall(response.text)
    assert len(urls) >= 5, urls
    for url in urls:
        assert not urlsplit(url).scheme and not url.startswith("/"), url
        asset = await client.get(f"/{url}")
        assert asset.status_code == 200, (url, asset.status_code)
        assert asset.headers["cache-control"] == "no-cache"


@pytest.mark.anyio
async def test_docs_loads_swagger_ui_from_the_package(client: httpx.AsyncClient) -> None:
    """/docs names the vendored Swagger UI and the service's own schema, no CDN, and turns
    off the online validator (which fetches an image from validator.swagger.io)."""
    response = await client.get("/docs")
    assert response.status_code == 200
    urls = [*_URL_ATTRIBUTE.findall(response.text), *_JS_URL.findall(response.text)]
    assert "static/vendor/swagger-ui/swagger-ui-bundle.js" in urls
    for url in urls:
        assert not urlsplit(url).scheme and not url.startswith("//"), url
        assert (await client.get(f"/{url}")).status_code == 200, url
    assert '"validatorUrl": null' in response.text
    assert (await client.get("/redoc")).status_code == 404  # FastAPI's would load a CDN


@pytest.mark.anyio
@pytest.mark.parametrize(
    "path",
    [
        "/static/..%2Fdashboard.py",
        "/static/..%2F..%2F..%2Fpyproject.toml",
        "/static/%2Fetc%2Fpasswd",
        "/static/vendor",
        "/static/vendor/uplot/missing.js",
        "/static/",
    ],
)
async def test_static_serves_nothing_outside_its_folder(
    client: httpx.AsyncClient, path: str
) -> None:
    """Paths that climb out of the static folder, directories and missing files are a 404
    JSON error, never a file."""
    response = await client.get(path)
    assert response.status_code == 404, (path, response.text[:200])
    assert response.json()["error"]["code"] == "not_found"


def test_vendored_assets_ship_with_their_licences() -> None:
    """Each vendored library's files are in the package with its licence beside them."""
    for folder, names in VENDORED.items():
        for name in names:
            path = STATIC_DIR / "vendor" / folder / name
            assert path.is_file() and path.stat().st_size > 0, path


# ---- in a real browser -------------------------------------------------------------------


@dataclass
class Watch:
    """Everything a page asked for and complained about, for one origin."""

    origin: str
    requests: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def attach(self, context: BrowserContext, page: Page) -> None:
        context.on("request", lambda request: self._request(request.url))
        context.on(
            "requestfailed", lambda request: self.failed.append(f"{request.url}: {request.failure}")
        )
        context.on("response", self._response)
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def _request(self, url: str) -> None:
        self.requests.append(url)
        parts = urlsplit(url)
        if parts.scheme not in ("data", "blob") and f"{parts.scheme}://{parts.netloc}" != (
            self.origin
        ):
            self.foreign.append(url)

    def _response(self, response: Any) -> None:
        if response.status >= 400:
            self.failed.append(f"{response.url}: HTTP {response.status}")

    def assert_clean(self) -> None:
        assert not self.foreign, f"requests to another origin: {self.foreign}"
        assert not self.failed, f"failed requests: {self.failed}"
        assert not self.errors, f"console errors: {self.errors}"


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium, installed with ``scripts/apt-install`` when it is missing."""
    if not CHROMIUM.exists():
        done = subprocess.run(
            [str(REPO / "scripts" / "apt-install"), "chromium"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0 or not CHROMIUM.exists():
            pytest.fail(
                f"the browser tests need Debian's chromium at {CHROMIUM}, and "
                f"`scripts/apt-install chromium` failed (exit {done.returncode}):\n"
                f"{(done.stdout + done.stderr).strip()[-2000:]}",
                pytrace=False,
            )
    return str(CHROMIUM)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """A real ``keygen serve`` (the embedded SQLite default) on a data dir of its own."""
    root = tmp_path_factory.mktemp("dashboard-serve")
    serve = ServeProcess({"KEYGEN_DATA_DIR": str(root / "data")}, log=root / "serve.log")
    serve.start()
    try:
        yield serve
    finally:
        serve.stop()


@pytest.fixture
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture
def browser(playwright: Playwright, chromium: str, tmp_path: Path) -> Iterator[BrowserContext]:
    """Chromium on a fresh profile, none of its background traffic."""
    context = playwright.chromium.launch_persistent_context(
        tmp_path / "profile",
        executable_path=chromium,
        args=CHROMIUM_ARGS,
        headless=True,
        viewport=VIEWPORT,
    )
    context.set_default_timeout(PAGE_DEADLINE_MS)
    try:
        yield context
    finally:
        context.close()


class Load:
    """Allocations in a background thread, a few a second per namespace, until stopped."""

    def __init__(self, url: str, namespaces: tuple[str, ...] = ("default", "orders")) -> None:
        self.url = url
        self.namespaces = namespaces
        self.acknowledged = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-load", daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as http:
            n = 0
            while not self._stop.is_set():
                namespace = self.namespaces[n % len(self.namespaces)]
                try:
                    response = http.post("/allocate", json={"size": 100, "namespace": namespace})
                    response.raise_for_status()
                    self.acknowledged += 1
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                n += 1
                self._stop.wait(0.02)  # pacing, ~50 requests a second


def _advance_ledger(data_dir: Path, namespace: str, last_id: int) -> None:
    """Move a namespace's counter up, as a restore would, through the ledger's own API."""

    async def advance() -> None:
        ledger = await SqliteLedger.open(data_dir)
        try:
            await ledger.advance_to(namespace, last_id)
        finally:
            await ledger.aclose()

    # Playwright's sync API owns this thread's event loop: run ours in another thread.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, advance()).result(30)


def _wait_for(page: Page, what: str, predicate: str, timeout_ms: int, seen: str) -> None:
    """Wait until the JS ``predicate`` holds; on the deadline, fail saying what was seen."""
    try:
        page.wait_for_function(predicate, timeout=timeout_ms)
    except PlaywrightTimeout:
        pytest.fail(
            f"{what}: not within {timeout_ms / 1000:g}s; the page had {page.evaluate(seen)}",
            pytrace=False,
        )


CHARTS_FILLED = """() => {
  const d = window.keygenDashboard;
  if (!d || !d.charts.rate) return false;
  const points = d.points();
  const filled = (name) => Object.values(points[name].series).some((n) => n > 0);
  const positive = d.charts.rate.data[1].some((v) => v !== null && v > 0);
  return Object.values(points).every((c) => c.x > 0) && positive
    && ["rate", "latency", "errors", "layers", "breakers", "redis"].every(filled);
}"""
SEEN_CHARTS = """() => window.keygenDashboard
  ? {points: window.keygenDashboard.points(), problems: window.keygenDashboard.state.problems}
  : "no window.keygenDashboard" """
SEEN_ALERTS = """() => [...document.querySelectorAll('#alerts tbody tr')]
  .map((tr) => tr.dataset.alert + ':' + tr.dataset.state)"""


def _save_screenshot(page: Page, tmp_path: Path, name: str, *, publish: bool = False) -> Path:
    """The whole page as a PNG in ``tmp_path``; with ``publish``, also in the folder that
    ``KEYGEN_SCREENSHOT_DIR`` names (docs/images/ for docs/monitoring.md)."""
    path = tmp_path / name
    page.screenshot(path=path, full_page=True)
    if publish and (target := os.environ.get(SCREENSHOT_DIR_ENV)):
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(target) / name)
    return path


@pytest.mark.e2e
def test_dashboard_in_chromium(
    server: ServeProcess, browser: BrowserContext, tmp_path: Path
) -> None:
    """Against a live service the page loads from its own origin with no error, its charts
    fill with points, the window selector switches the history, the ledger lists the
    namespaces, and an alert that starts firing shows up."""
    page = browser.new_page()
    watch = Watch(server.url)
    watch.attach(browser, page)
    with Load(server.url) as load:
        page.goto(f"{server.url}/dashboard")
        _wait_for(page, "charts with data points", CHARTS_FILLED, PAGE_DEADLINE_MS, SEEN_CHARTS)

        page.click('#windows button[data-window="5m"]')
        _wait_for(
            page,
            "the 5m window",
            "() => window.keygenDashboard.state.history?.window_seconds === 300",
            PAGE_DEADLINE_MS,
            "() => window.keygenDashboard.state.history?.window_seconds",
        )
        assert "window=5m" in page.url

        # Nothing fires on a fresh instance; then a namespace nears 2^63-1 in the ledger.
        assert page.locator("#alerts tbody tr").count() > 0, "no alert rules listed"
        assert page.locator('#alerts tbody tr[data-state="firing"]').count() == 0
        _advance_ledger(Path(server.env["KEYGEN_DATA_DIR"]), NEARLY_FULL, MAX_ID - 10**12)
        firing = '#alerts tbody tr[data-alert="KeygenHeadroomLow"][data-state="firing"]'
        _wait_for(
            page,
            "KeygenHeadroomLow firing",
            f"() => document.querySelector('{firing}') !== null",
            ALERT_DEADLINE_MS,
            SEEN_ALERTS,
        )
        assert NEARLY_FULL in page.locator(firing).inner_text()
        _wait_for(
            page,
            "the ledger's namespaces",
            f"() => ['default', 'orders', '{NEARLY_FULL}'].every((ns) =>"
            " document.querySelector(`#ledger tr[data-namespace='${ns}']`))",
            PAGE_DEADLINE_MS,
            "() => [...document.querySelectorAll('#ledger tbody tr')].map((tr) => tr.innerText)",
        )
        assert page.locator("#redis-master").inner_text() == "not configured"
        assert page.locator("#status").inner_text() in ("healthy", "degraded")
        assert _save_screenshot(page, tmp_path, "dashboard.png", publish=True).stat().st_size > 0
    assert load.acknowledged > 0 and not load.errors, (load.acknowledged, load.errors[:5])
    assert len(watch.requests) > 10, watch.requests
    watch.assert_clean()


@pytest.mark.e2e
def test_docs_in_chromium(server: ServeProcess, browser: BrowserContext, tmp_path: Path) -> None:
    """/docs renders Swagger UI with the service's operations, all from its own origin."""
    page = browser.new_page()
    watch = Watch(server.url)
    watch.attach(browser, page)
    page.goto(f"{server.url}/docs")
    paths = page.locator(".opblock-summary-path")
    paths.first.wait_for()
    shown = set(paths.all_inner_texts())
    assert {"/allocate", "/health", "/metrics", "/dashboard"} <= shown, shown
    _save_screenshot(page, tmp_path, "docs.png")
    watch.assert_clean()
