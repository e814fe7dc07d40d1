"""The package as the image builds it: a wheel built from the source with the locked build
backend, installed with the locked runtime set into a fresh environment outside the checkout,
serves, with every asset of its pages."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest

import keygen
from keygen.cluster.processes import free_port
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ROOT / "requirements"

pytestmark = pytest.mark.e2e


def run(*argv: str | Path, cwd: Path) -> str:
    """Run a command with pip's own defaults (none of this machine's pip settings) and no
    trace of the checkout's environment; fail with its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    result = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{argv}: {result.stdout}{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``bin`` folder of a fresh virtual environment holding the built wheel, installed
    the way deploy/Dockerfile installs it (pip, the locks' hashes, no dependency resolution)."""
    where = tmp_path_factory.mktemp("wheel")
    assert not where.is_relative_to(ROOT)
    pip = ("-m", "pip", "install", "--quiet", "--no-deps", "--require-hashes", "-r")
    run(sys.base_prefix + "/bin/python3", "-m", "venv", where / "build", cwd=where)
    run(where / "build/bin/python", *pip, LOCKS / "build.txt", cwd=where)
    run(where / "build/bin/python", "-m", "pip", "wheel", "--quiet", "--no-deps",
        "--no-build-isolation", "--wheel-dir", where / "wheels", ROOT, cwd=where)  # fmt: skip
    (wheel,) = (where / "wheels").glob("keygen-*.whl")
    run(sys.base_prefix + "/bin/python3", "-m", "venv", where / "venv", cwd=where)
    run(where / "venv/bin/python", *pip, LOCKS / "image.txt", cwd=where)
    run(where / "venv/bin/python", "-m", "pip", "install", "--quiet", "--no-deps", wheel, cwd=where)
    return where / "venv" / "bin"


@pytest.fixture(scope="module")
def served(installed: Path) -> Iterator[str]:
    """``keygen serve`` from the wheel's environment, its data in a folder of its own."""
    port = free_port()
    data = installed.parent.parent / "data"
    data.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYGEN_", "PYTHON"))}
    env["KEYGEN_DATA_DIR"] = str(data)
    log = data.parent / "serve.log"
    with log.open("wb") as output:
        proc = subprocess.Popen(
            [installed / "keygen", "serve", "--port", str(port)],
            cwd=data,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(url + "/health/live", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(ready, 60, "the wheel's keygen serve answering /health/live")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_wheels_keygen_reports_the_sources_version(installed: Path) -> None:
    """``keygen --version`` from the installed wheel prints the version of the source it was
    built from, and the package it imports is the wheel's, not the checkout's."""
    out = run(installed / "keygen", "--version", cwd=installed)
    assert keygen.__version__ in out.split()
    where = run(installed / "python", "-c", "import keygen; print(keygen.__file__)", cwd=installed)
    assert Path(where.strip()).is_relative_to(installed.parent)


def test_the_wheel_serves_allocations(served: str) -> None:
    """The installed wheel's ``keygen serve`` hands out a range on its embedded ledger."""
    response = httpx.post(served + "/allocate", json={"size": 10}, timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["end"] - body["start"] == 9


@pytest.mark.parametrize("page", ["/dashboard", "/docs"])
def test_the_wheels_pages_load_every_vendored_asset(served: str, page: str) -> None:
    """Every script and stylesheet the page names is served from the wheel's files."""
    html = httpx.get(served + page, timeout=10)
    assert html.status_code == 200
    assets = re.findall(r"""(?:src|href|_url)\s*[=:]\s*["']([^"']*static/[^"']+)["']""", html.text)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in assets:
        response = httpx.get(urljoin(served + page, asset), timeout=10)
        assert response.status_code == 200 and response.content, asset
