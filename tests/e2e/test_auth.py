"""API keys against real ``keygen serve`` processes: 401, 403, allowed, a key created or
revoked with ``keygen keys`` taking effect on the running instance, and the loud warning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from keygen.client import KeygenAPIError, KeygenClient
from tests.support.processes import ServeProcess, free_port, keygen

pytestmark = pytest.mark.e2e

#: What docs/security.md promises: a new or revoked key is seen within this.
TAKES_EFFECT_WITHIN = 5.0


def create_key(env: dict[str, str], *scopes: str) -> dict[str, object]:
    args = [a for scope in scopes for a in ("--scope", scope)]
    done = keygen("keys", "create", "--name", "e2e", *args, "--json", env=env)
    assert done.returncode == 0, done.stderr
    created: dict[str, object] = json.loads(done.stdout)
    return created


def allocate_status(url: str, token: str | None = None, namespace: str = "default") -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.post(
        f"{url}/allocate", json={"namespace": namespace, "size": 1}, headers=headers, timeout=5
    )
    return response.status_code


def wait_for(condition: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``condition`` held; fails after ``timeout``."""
    started = time.monotonic()
    while not condition():
        elapsed = time.monotonic() - started
        assert elapsed < timeout, f"not within {timeout:g} s"
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[tuple[ServeProcess, dict[str, str]]]:
    """A real keygen serve (KEYGEN_AUTH=auto, no key yet) and the environment that names its
    ledger, for the ``keygen keys`` commands."""
    env = {"KEYGEN_DATA_DIR": str(tmp_path / "data")}
    server = ServeProcess(env, log=tmp_path / "serve.log").start()
    try:
        yield server, env
    finally:
        server.stop()


def test_a_key_created_on_a_running_instance_turns_auto_to_required(
    instance: tuple[ServeProcess, dict[str, str]],
) -> None:
    """auto serves without a key while none exists; within 5 s of `keygen keys create`, the
    running instance answers 401 without one, 403 outside the key's namespaces and 200 in
    them, allocating nothing for the refused."""
    server, env = instance
    assert allocate_status(server.url) == 200
    created = create_key(env, "allocate:orders")
    token = str(created["token"])
    assert set(created) >= {"id", "name", "token", "scopes"}
    assert created["scopes"] == ["allocate:orders"]
    wait_for(lambda: allocate_status(server.url) == 401, TAKES_EFFECT_WITHIN)
    body = httpx.post(f"{server.url}/allocate", json={}, timeout=5).json()
    assert body["error"]["code"] == "unauthorized"
    assert allocate_status(server.url, token, "default") == 403
    assert allocate_status(server.url, "kg_" + "x" * 43, "orders") == 401
    with KeygenClient(server.url, api_key=token) as client:
        first = client.allocate(size=10, namespace="orders")
        second = client.allocate(size=10, namespace="orders")
        with pytest.raises(KeygenAPIError) as refused:
            client.allocate(size=10, namespace="default")
    assert refused.value.status_code == 403
    assert second.start == first.end + 1  # the refused requests granted nothing in between
    assert httpx.get(f"{server.url}/health/ready", timeout=5).json()["status"] == "healthy"


def test_a_revoked_key_is_refused_by_the_running_instance_within_5_seconds(
    instance: tuple[ServeProcess, dict[str, str]],
) -> None:
    """`keygen keys revoke ID` takes effect on the running instance without a restart."""
    server, env = instance
    created = create_key(env, "allocate:*")
    token = str(created["token"])
    wait_for(lambda: allocate_status(server.url, token) == 200, TAKES_EFFECT_WITHIN)
    listed = json.loads(keygen("keys", "list", "--json", env=env).stdout)
    assert [k["id"] for k in listed] == [created["id"]] and listed[0]["revoked_at"] is None
    assert "token" not in listed[0]
    revoked = keygen("keys", "revoke", str(created["id"]), env=env)
    assert revoked.returncode == 0, revoked.stderr
    took = wait_for(lambda: allocate_status(server.url, token) == 401, TAKES_EFFECT_WITHIN)
    assert took < TAKES_EFFECT_WITHIN
    assert keygen("keys", "revoke", str(created["id"]), env=env).returncode == 1
    assert json.loads(keygen("keys", "list", "--json", env=env).stdout)[0]["revoked_at"]


def test_the_command_line_sends_the_api_key(
    instance: tuple[ServeProcess, dict[str, str]],
) -> None:
    """`keygen allocate --api-key` and KEYGEN_API_KEY are sent; `keygen monitor --api-key`
    reads the detailed health that needs the read scope."""
    server, env = instance
    token = str(create_key(env, "allocate:orders", "read")["token"])
    wait_for(lambda: allocate_status(server.url) == 401, TAKES_EFFECT_WITHIN)
    base = ["allocate", "--url", server.url, "--namespace", "orders"]
    refused = keygen(*base, env=env)
    assert refused.returncode == 1 and "401" in refused.stderr
    by_option = keygen(*base, "--api-key", token, env=env)
    assert by_option.returncode == 0, by_option.stderr
    assert json.loads(by_option.stdout)["namespace"] == "orders"
    assert keygen(*base, env={**env, "KEYGEN_API_KEY": token}).returncode == 0
    watch = ["monitor", "--once", "--url", server.url]
    assert keygen(*watch, "--api-key", token, env=env).returncode == 0
    blind = keygen(*watch, env=env)
    assert blind.returncode == 2 and "api-key" in blind.stdout


def _serve_output(env: dict[str, str], host: str) -> str:
    """What `keygen serve --host host` says before it is ready (it is then stopped)."""
    port = free_port()
    log_path = Path(env["KEYGEN_DATA_DIR"]).parent / f"serve-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "keygen", "serve", "--host", host, "--port", str(port)],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "Uvicorn running" in log_path.read_text(), 30)
    finally:
        proc.terminate()
        proc.wait(30)
    return log_path.read_text()


def test_serving_beyond_loopback_without_keys_is_loud(tmp_path: Path) -> None:
    """On 0.0.0.0 with auth off, or auto and no key, start-up warns; with a key, or on
    loopback, or with KEYGEN_AUTH=required, it does not."""
    env = {"KEYGEN_DATA_DIR": str(tmp_path / "data")}
    warning = "requires no API key"
    assert warning in _serve_output({**env, "KEYGEN_AUTH": "off"}, "0.0.0.0")
    assert warning in _serve_output(env, "0.0.0.0")
    assert warning not in _serve_output(env, "127.0.0.1")
    assert warning not in _serve_output({**env, "KEYGEN_AUTH": "required"}, "0.0.0.0")
    create_key(env, "read")
    assert warning not in _serve_output(env, "0.0.0.0")
