"""Upgrades, request targets and singleton headers against a real ``keygen serve`` with keys
required, over raw sockets (docs/security.md, "Upgrades, request targets, singleton
headers").

One server serves every test of the module: keys required (one key, ``allocate:*`` and
``read``), ``KEYGEN_ALLOWED_HOSTS`` set and the access log on. What a refused request named
is checked against the ledger itself: its namespace has no grant. Everything aims at
127.0.0.1 only.
"""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest

from keygen.ledgers.sqlite import LEDGER_FILENAME
from tests.e2e.test_hostile import _exchange, _json_error
from tests.support.processes import ServeProcess, keygen
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

HOST = b"keygen.example"
JSON = b"Content-Type: application/json\r\n"
#: Seconds between two warnings of one refusal code, at least (api/edge.py).
LOG_INTERVAL = 60.0


@dataclass
class Keyed:
    """The module's server, its data dir and log, and its one key."""

    process: ServeProcess
    data_dir: Path
    log: Path
    token: str

    @property
    def auth(self) -> bytes:
        return b"Authorization: Bearer %s\r\n" % self.token.encode()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyed]:
    """A real keygen serve with keys required, allowed hosts and the access log."""
    tmp = tmp_path_factory.mktemp("edge-upgrade")
    env = {
        "KEYGEN_DATA_DIR": str(tmp / "data"),
        "KEYGEN_AUTH": "required",
        "KEYGEN_ALLOWED_HOSTS": f"{HOST.decode()},127.0.0.1",
        "KEYGEN_ACCESS_LOG": "true",
        "KEYGEN_LEASE_SIZE": "1000",
    }
    args = ("--scope", "allocate:*", "--scope", "read", "--json")
    created = keygen("keys", "create", "--name", "edge", *args, env=env)
    assert created.returncode == 0, created.stderr
    log = tmp / "serve.log"
    process = ServeProcess(env, log=log).start()
    try:
        yield Keyed(process, tmp / "data", log, json.loads(created.stdout)["token"])
    finally:
        process.stop()


def _post(body: bytes, *extra: bytes) -> bytes:
    """``POST /allocate`` with ``body``, a JSON type and the ``extra`` header lines."""
    head = b"POST /allocate HTTP/1.1\r\nHost: %s\r\n%s%sContent-Length: %d\r\n\r\n"
    return head % (HOST, JSON, b"".join(extra), len(body)) + body


def _responses(keyed: Keyed, data: bytes, count: int) -> list[tuple[int, dict[str, Any]]]:
    """Send ``data`` on one connection; the status and JSON body of its first ``count``
    answers (read by their Content-Length: the connection may stay open)."""
    answers: list[tuple[int, dict[str, Any]]] = []
    buffer = b""
    deadline = time.monotonic() + 10
    with socket.create_connection(("127.0.0.1", keyed.process.port), timeout=10) as sock:
        sock.sendall(data)
        while len(answers) < count:
            head, sep, rest = buffer.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length: *(\d+)", head)
            if sep and length and len(rest) >= int(length.group(1)):
                size = int(length.group(1))
                status = int(head.split(b" ", 2)[1])
                answers.append((status, json.loads(rest[:size])))
                buffer = rest[size:]
                continue
            assert time.monotonic() < deadline, f"{len(answers)} answers of {count}: {buffer!r}"
            chunk = sock.recv(65536)
            assert chunk, f"closed after {len(answers)} answers of {count}: {buffer!r}"
            buffer += chunk
    return answers


def _grants(keyed: Keyed, namespace: str) -> int:
    path = keyed.data_dir / LEDGER_FILENAME
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as ledger:
        (count,) = ledger.execute(
            "SELECT count(*) FROM grants WHERE namespace = ?", (namespace,)
        ).fetchone()
    return int(count)


def _rejected(keyed: Keyed, code: str) -> float:
    text = httpx.get(
        f"{keyed.process.url}/metrics",
        headers={"Accept": "text/plain", "Authorization": f"Bearer {keyed.token}"},
    ).text
    match = re.search(rf'keygen_rejected_requests_total{{code="{code}"}} (\S+)', text)
    return float(match.group(1)) if match else 0.0


def _log(keyed: Keyed) -> str:
    return keyed.log.read_text(errors="replace")


def test_an_upgrade_is_served_as_the_request_it_also_is(keyed: Keyed) -> None:
    """POST /allocate with Connection: Upgrade and Upgrade (h2c, websocket, anything) is
    served as if Upgrade were absent: its body is read and validated (its namespace and
    size served; a bad size a 422; no key a 401), nothing lands in 'default', the request
    pipelined after it is answered too, and no warning is logged."""
    default_before = _grants(keyed, "default")
    upgrades = (
        b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQ\r\n",
        b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
        b"Connection: keep-alive, Upgrade\r\nUpgrade: foo/2, bar\r\n",
    )
    probe = b"GET /health/live HTTP/1.1\r\nHost: %s\r\n\r\n" % HOST
    for i, upgrade in enumerate(upgrades):
        namespace = f"upgrade-{i}".encode()
        served = _post(b'{"namespace": "%s", "size": 5}' % namespace, keyed.auth, upgrade)
        (status, body), after = _responses(keyed, served + probe, 2)
        assert status == 200, body
        assert (body["namespace"], body["size"]) == (namespace.decode(), 5)
        assert after == (200, {"status": "alive"})
        bad = _post(b'{"namespace": "upgrade-bad", "size": 0}', keyed.auth, upgrade)
        unkeyed = _post(b'{"namespace": "upgrade-bad"}', upgrade)
        refused = _responses(keyed, bad + unkeyed, 2)
        assert [(s, b["error"]["code"]) for s, b in refused] == [
            (422, "invalid_request"),
            (401, "unauthorized"),
        ]
    assert _grants(keyed, "upgrade-bad") == 0
    assert _grants(keyed, "default") == default_before
    assert "Unsupported upgrade" not in _log(keyed)


def test_pipelined_upgrades_are_bounded_as_any_pipelined_requests(keyed: Keyed) -> None:
    """Upgrade requests pipelined in one write are each answered; forty of them, past
    KEYGEN_MAX_PIPELINE (16), close the connection as any forty pipelined requests do,
    counted as too_many_pipelined, and no traceback is logged."""
    upgrade = (
        b"GET /health/live HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
        % HOST
    )
    assert _responses(keyed, upgrade * 3, 3) == [(200, {"status": "alive"})] * 3
    already = _rejected(keyed, "too_many_pipelined")
    closed = _exchange(keyed.process, upgrade * 40)
    assert closed.count(b" 200 OK") < 40
    assert _rejected(keyed, "too_many_pipelined") == already + 1
    assert "Traceback" not in _log(keyed)


def test_a_websocket_handshake_is_answered_in_the_json_error_shape(keyed: Keyed) -> None:
    """A WebSocket handshake is never upgraded, so never reaches the app as a WebSocket:
    without a key it gets the JSON 401 any request without one gets, with a key GET
    /allocate's JSON 405, and /health/live its usual answer."""
    handshake = (
        b"GET %s HTTP/1.1\r\nHost: %s\r\n%sConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    cases = (
        (b"/allocate", b"", 401, "unauthorized"),
        (b"/metrics", b"", 401, "unauthorized"),
        (b"/allocate", keyed.auth, 405, "method_not_allowed"),
    )
    for path, key, status, code in cases:
        ((got, body),) = _responses(keyed, handshake % (path, HOST, key), 1)
        assert (got, body["error"]["code"]) == (status, code), path
    alive = _responses(keyed, handshake % (b"/health/live", HOST, b""), 1)
    assert alive == [(200, {"status": "alive"})]


def test_connect_and_targets_that_are_no_path_get_a_json_400(keyed: Keyed) -> None:
    """CONNECT (to an authority or a path), http:// without a host, an unclosed IPv6
    literal, userinfo, an absolute URI naming another host and '*' each get a JSON 400
    bad_target before any key check, counted, and no traceback is logged; an absolute URI
    naming the Host is served."""
    targets = (
        b"CONNECT keygen.example:443",
        b"CONNECT /allocate",
        b"GET http://",
        b"GET http://[::1",
        b"GET http://a:b@/x",
        b"GET http://a:b@keygen.example/health/live",
        b"GET http://evil.example/health/live",
        b"OPTIONS *",
    )
    already = _rejected(keyed, "bad_target")
    for target in targets:
        response = _exchange(keyed.process, target + b" HTTP/1.1\r\nHost: %s\r\n\r\n" % HOST)
        assert _json_error(response) == (400, "bad_target"), target
    assert _rejected(keyed, "bad_target") == already + len(targets)
    absolute = b"GET http://keygen.example/health/live HTTP/1.1\r\nHost: %s\r\n\r\n" % HOST
    assert _responses(keyed, absolute, 1) == [(200, {"status": "alive"})]
    log = _log(keyed)
    assert "Traceback" not in log and "Fatal error" not in log, log[-3000:]


def test_singleton_headers_repeated_or_malformed_get_a_json_400(keyed: Keyed) -> None:
    """Two Authorization (an invalid then a valid one), two Host, a Host with userinfo whose
    first part is allowed, no Host on HTTP/1.1, TE: identity, chunked and a body coded
    other than chunked alone each get a JSON 400 bad_header, and allocate nothing."""

    def body(i: int) -> bytes:
        return b'{"namespace": "single-%d", "size": 5}' % i

    wrong = b"Authorization: Bearer kg_" + b"x" * 43 + b"\r\n"
    chunked = b"Transfer-Encoding: identity, chunked\r\n\r\n"
    requests = [
        _post(body(0), wrong, keyed.auth),
        _post(body(1), keyed.auth, b"Host: evil.example\r\n"),
        _post(body(2), keyed.auth).replace(
            b"Host: keygen.example", b"Host: keygen.example:80@evil.example"
        ),
        _post(body(3), keyed.auth).replace(b"Host: keygen.example\r\n", b""),
        _post(body(4), keyed.auth, b"TE: identity, chunked\r\nConnection: TE\r\n"),
        b"POST /allocate HTTP/1.1\r\nHost: keygen.example\r\n%s%s%s%x\r\n%s\r\n0\r\n\r\n"
        % (JSON, keyed.auth, chunked, len(body(5)), body(5)),
    ]
    for i, request in enumerate(requests):
        assert _json_error(_exchange(keyed.process, request)) == (400, "bad_header"), i
    assert [_grants(keyed, f"single-{i}") for i in range(len(requests))] == [0] * len(requests)
    served = _responses(keyed, _post(body(9), keyed.auth, b"Connection: close\r\n"), 1)
    assert served[0][0] == 200  # the same request, once each field is given once


def _warnings(keyed: Keyed, code: str) -> list[datetime]:
    """When the log warned of refusals with ``code``."""
    pattern = rf"^(\S+ \S+) WARNING .* refused \d+ .* with \d+ {code} since"
    return [
        datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
        for m in re.finditer(pattern, _log(keyed), re.M)
    ]


def _warned(keyed: Keyed, code: str) -> bool:
    return bool(_warnings(keyed, code))


def test_refusals_are_counted_and_logged_once_a_minute_per_code(keyed: Keyed) -> None:
    """Twenty bad targets and twenty bad headers add twenty to each code's count in
    keygen_rejected_requests_total; each code has its own warning, the first refusal of it
    logged at once, and no two warnings of one code are less than a minute apart."""
    counts = {code: _rejected(keyed, code) for code in ("bad_target", "bad_header")}
    for _ in range(20):
        _exchange(keyed.process, b"CONNECT keygen.example:443 HTTP/1.1\r\nHost: x\r\n\r\n")
        _exchange(keyed.process, b"GET /health/live HTTP/1.1\r\n\r\n")
    for code, before in counts.items():
        assert _rejected(keyed, code) == before + 20, code
        wait_for(partial(_warned, keyed, code), 5, f"a warning of {code}")
        times = _warnings(keyed, code)
        gaps = [(b - a).total_seconds() for a, b in pairwise(times)]
        assert all(gap >= LOG_INTERVAL for gap in gaps), (code, times)


def test_query_values_are_masked_in_the_access_log(keyed: Keyed) -> None:
    """A token sent in a query (api_key=, token=, or under any other name, or alone) is not
    written to the access log: each query value is logged as ***."""
    secrets = [f"kg_secret{i}" for i in range(4)]
    query = "api_key={}&token={}&x={}&{}".format(*secrets)
    request = b"GET /health/live?%s HTTP/1.1\r\nHost: %s\r\n\r\n" % (query.encode(), HOST)
    assert _responses(keyed, request, 1) == [(200, {"status": "alive"})]
    line = '"GET /health/live?api_key=***&token=***&x=***&*** HTTP/1.1" 200'
    wait_for(lambda: line in _log(keyed), 5, "the access log line")
    assert not any(secret in _log(keyed) for secret in secrets)
