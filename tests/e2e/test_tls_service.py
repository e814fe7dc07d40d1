"""HTTPS and mutual TLS against real ``keygen serve`` processes: who gets a range and who does
not (checked against the ledger itself), the edge's timers under TLS, the command line and the
monitor as clients, and the start-up errors for unusable files."""

from __future__ import annotations

import socket
import sqlite3
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import httpx
import pytest

from keygen.client import AsyncKeygenClient, KeygenClient, tls_context, tls_refusal
from keygen.cluster.certs import Certificates, make_certificates
from keygen.config import Settings
from keygen.keys_cli import auth_warning
from keygen.ledgers.sqlite import LEDGER_FILENAME
from keygen.monitor import EXIT_DOWN, EXIT_HEALTHY
from keygen.monitor import main as monitor_main
from tests.support.processes import ServeProcess, keygen

pytestmark = pytest.mark.e2e

#: Also the TLS handshake's bound: short, so that the timer tests take seconds.
HEADER_TIMEOUT = 1.5
#: What a refused TLS client sees: a failed handshake, or (TLS 1.3 checks the client's
#: certificate after the client's handshake is done) a connection closed without an answer.
REFUSED = (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """The CA, server and client certificates the services trust."""
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def strangers(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """Certificates of another CA, which no service trusts."""
    return make_certificates(tmp_path_factory.mktemp("strangers"))


def _serve(
    tmp: Path,
    certs: Certificates,
    client_cert: Literal["none", "optional", "required"],
    workers: int = 1,
) -> Iterator[ServeProcess]:
    env = {"KEYGEN_DATA_DIR": str(tmp / "data"), "KEYGEN_HEADER_TIMEOUT": str(HEADER_TIMEOUT)}
    server = ServeProcess(
        env, log=tmp / "serve.log", tls=certs, client_cert=client_cert, workers=workers
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def https(tmp_path_factory: pytest.TempPathFactory, certs: Certificates) -> Iterator[ServeProcess]:
    """HTTPS without client certificates, two workers (each sets up its own TLS server)."""
    yield from _serve(tmp_path_factory.mktemp("https"), certs, "none", workers=2)


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory, certs: Certificates) -> Iterator[ServeProcess]:
    """HTTPS that requires a client certificate signed by the CA."""
    yield from _serve(tmp_path_factory.mktemp("mtls"), certs, "required")


@pytest.fixture(scope="module")
def optional(
    tmp_path_factory: pytest.TempPathFactory, certs: Certificates
) -> Iterator[ServeProcess]:
    """HTTPS that checks a client certificate when one is shown."""
    yield from _serve(tmp_path_factory.mktemp("optional"), certs, "optional")


def grants(server: ServeProcess, namespace: str) -> int:
    """The ledger's grants in ``namespace``: 0 when nothing was ever allocated there."""
    path = Path(server.env["KEYGEN_DATA_DIR"]) / LEDGER_FILENAME
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as ledger:
        (count,) = ledger.execute(
            "SELECT count(*) FROM grants WHERE namespace = ?", (namespace,)
        ).fetchone()
    return int(count)


def closed_within(sock: socket.socket, timeout: float) -> tuple[float, bytes]:
    """Read until the server closes ``sock``: the seconds it took and what it sent; fails if
    it is still open after ``timeout``."""
    started = time.monotonic()
    received = b""
    while (left := started + timeout - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except (ConnectionResetError, ssl.SSLError):
            return time.monotonic() - started, received
        if not chunk:
            return time.monotonic() - started, received
        received += chunk
    raise AssertionError(f"still open after {timeout:g} s")


# --- HTTPS ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_https_allocates_for_a_client_trusting_the_ca(
    https: ServeProcess, certs: Certificates
) -> None:
    """The sync and async clients allocate over https:// with verify=the CA's file, and
    /health/live answers over HTTPS."""
    assert https.url.startswith("https://")
    with KeygenClient(https.url, verify=certs.ca) as client:
        first = client.allocate(size=10, namespace="tls")
    async with AsyncKeygenClient(https.url, verify=str(certs.ca)) as aclient:
        second = await aclient.allocate(size=10, namespace="tls")
    assert (first.size, second.size) == (10, 10)
    assert first.end < second.start or second.end < first.start  # two workers' leases
    live = httpx.get(f"{https.url}/health/live", verify=tls_context(certs.ca), timeout=5)
    assert live.status_code == 200
    assert "Uvicorn running on https://" in https.log_tail(20_000)


def test_a_client_not_trusting_the_ca_gets_a_certificate_error_at_once(
    https: ServeProcess, strangers: Certificates
) -> None:
    """Trusting another CA, or the system's, fails the handshake with a certificate error,
    raised on the first attempt (never retried), and nothing is allocated."""
    for verify in (strangers.ca, True):
        started = time.monotonic()
        with (
            KeygenClient(https.url, verify=verify) as client,
            pytest.raises(httpx.ConnectError) as failed,
        ):
            client.allocate(namespace="untrusted")
        assert "CERTIFICATE_VERIFY_FAILED" in str(failed.value)
        assert isinstance(tls_refusal(failed.value), ssl.SSLCertVerificationError)
        assert time.monotonic() - started < 2, "a certificate error was retried"
    assert grants(https, "untrusted") == 0


def test_plain_http_to_the_tls_port_allocates_nothing(https: ServeProcess) -> None:
    """A plain-HTTP request to the HTTPS port gets no answer (the connection is dropped) and
    nothing is allocated."""
    plain = https.url.replace("https://", "http://")
    with pytest.raises(httpx.TransportError):
        httpx.post(f"{plain}/allocate", json={"namespace": "plain", "size": 1}, timeout=5)
    assert grants(https, "plain") == 0


def test_a_stalled_handshake_and_silent_headers_are_both_timed_out(
    https: ServeProcess, certs: Certificates
) -> None:
    """Under TLS the header timeout still applies once the handshake is done (408), and a
    client that connects and never handshakes, or stops half-way through its hello, is
    closed after KEYGEN_HEADER_TIMEOUT too (uvicorn alone would keep it 60 s), in every
    worker."""
    hello_out = ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(
        ssl.MemoryBIO(), hello_out, server_hostname="localhost"
    )
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = hello_out.read()
    stalled = [socket.create_connection(("127.0.0.1", https.port)) for _ in range(6)]
    for sock in stalled[::2]:
        sock.sendall(hello[: len(hello) // 2])
    context = tls_context(certs.ca)
    assert isinstance(context, ssl.SSLContext)
    raw = socket.create_connection(("127.0.0.1", https.port))
    silent = context.wrap_socket(raw, server_hostname="localhost")
    try:
        for sock in stalled:
            took, _ = closed_within(sock, HEADER_TIMEOUT + 3)
            assert took < HEADER_TIMEOUT + 3
        _, answer = closed_within(silent, HEADER_TIMEOUT + 3)
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b'"request_timeout"' in answer
    finally:
        silent.close()
        for sock in stalled:
            sock.close()


# --- Mutual TLS ----------------------------------------------------------------------------


def test_mtls_required_refuses_clients_without_a_trusted_certificate(
    mtls: ServeProcess, certs: Certificates, strangers: Certificates
) -> None:
    """With KEYGEN_SSL_CLIENT_CERT=required, no certificate or one of another CA gets no
    answer and allocates nothing, not even /health/live; the CA's client certificate
    allocates."""
    for cert in (None, (strangers.client_cert, strangers.client_key)):
        with (
            KeygenClient(mtls.url, verify=certs.ca, cert=cert, retries=0) as client,
            pytest.raises(REFUSED),
        ):
            client.allocate(namespace="refused")
        with pytest.raises(REFUSED):
            httpx.get(f"{mtls.url}/health/live", verify=tls_context(certs.ca, cert), timeout=5)
    assert grants(mtls, "refused") == 0
    with KeygenClient(mtls.url, verify=certs.ca, cert=(certs.client_cert, certs.client_key)) as k:
        allocated = k.allocate(size=5, namespace="admitted")
    assert allocated.size == 5 and grants(mtls, "admitted") >= 1


def test_mtls_optional_admits_no_certificate_but_checks_one_shown(
    optional: ServeProcess, certs: Certificates, strangers: Certificates
) -> None:
    """With KEYGEN_SSL_CLIENT_CERT=optional, a client without a certificate and one with the
    CA's allocate; one showing another CA's certificate is refused and allocates nothing."""
    with KeygenClient(optional.url, verify=certs.ca) as client:
        assert client.allocate(size=1, namespace="anonymous").size == 1
    with KeygenClient(
        optional.url, verify=certs.ca, cert=(certs.client_cert, certs.client_key)
    ) as client:
        assert client.allocate(size=1, namespace="known").size == 1
    stranger = (strangers.client_cert, strangers.client_key)
    with (
        KeygenClient(optional.url, verify=certs.ca, cert=stranger, retries=0) as client,
        pytest.raises(REFUSED),
    ):
        client.allocate(namespace="stranger")
    assert grants(optional, "stranger") == 0


# --- The command line and the monitor as clients --------------------------------------------


def test_allocate_command_over_https_and_mtls(
    https: ServeProcess, mtls: ServeProcess, certs: Certificates
) -> None:
    """`keygen allocate --ca-certs` allocates over HTTPS, with --client-cert/--client-key
    over mTLS; without the CA it says why it failed, and an unreadable file exits 2."""
    done = keygen("allocate", "--url", https.url, "--ca-certs", str(certs.ca), "--size", "3")
    assert done.returncode == 0, done.stderr
    assert '"size":3' in done.stdout
    client = ["--client-cert", str(certs.client_cert), "--client-key", str(certs.client_key)]
    done = keygen("allocate", "--url", mtls.url, "--ca-certs", str(certs.ca), *client)
    assert done.returncode == 0, done.stderr
    done = keygen("allocate", "--url", https.url)
    assert done.returncode == 1
    assert "certificate verify failed" in done.stderr and "Traceback" not in done.stderr
    done = keygen("allocate", "--url", https.url, "--ca-certs", str(certs.directory / "nope"))
    assert done.returncode == 2
    assert "No such file" in done.stderr and "Traceback" not in done.stderr


def test_monitor_reads_an_mtls_instance(
    mtls: ServeProcess,
    certs: Certificates,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`keygen monitor --once` with the CA and the client certificate shows the instance
    healthy; without the CA it names the untrusted certificate, without the client
    certificate it points to --client-cert."""
    ca = ["--ca-certs", str(certs.ca)]
    client = ["--client-cert", str(certs.client_cert), "--client-key", str(certs.client_key)]
    assert monitor_main(["--once", "--url", mtls.url, *ca, *client]) == EXIT_HEALTHY
    assert "1 instance: 1 healthy" in capsys.readouterr().out
    assert monitor_main(["--once", "--url", mtls.url, *client]) == EXIT_DOWN
    assert "its certificate is not trusted (--ca-certs)" in capsys.readouterr().out
    assert monitor_main(["--once", "--url", mtls.url, *ca]) == EXIT_DOWN
    assert "--client-cert" in capsys.readouterr().out


# --- Start-up ------------------------------------------------------------------------------


def test_unusable_tls_files_stop_serve_at_start_up(tmp_path: Path, certs: Certificates) -> None:
    """A missing key file, a certificate that is not PEM, or mTLS without a CA stop
    `keygen serve` with exit 2, naming the setting and the file, without a traceback."""
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    missing = tmp_path / "missing.key"
    cert = ["--ssl-certfile", str(certs.server_cert)]
    cases = [
        ([*cert, "--ssl-keyfile", str(missing)], ["KEYGEN_SSL_KEYFILE", str(missing), "No such"]),
        (
            ["--ssl-certfile", str(junk), "--ssl-keyfile", str(certs.server_key)],
            ["KEYGEN_SSL_CERTFILE", str(junk), "not a PEM certificate chain"],
        ),
        (
            [*cert, "--ssl-keyfile", str(certs.server_key), "--ssl-client-cert", "required"],
            ["KEYGEN_SSL_CLIENT_CERT needs KEYGEN_SSL_CA_CERTS"],
        ),
    ]
    for flags, named in cases:
        done = keygen("serve", "--port", "9", *flags, env={"KEYGEN_DATA_DIR": str(tmp_path)})
        assert done.returncode == 2, done
        assert all(n in done.stderr for n in named), done.stderr
        assert "Traceback" not in done.stderr


def test_the_start_up_warning_names_plain_http_only_without_tls(certs: Certificates) -> None:
    """Beyond loopback without API keys, start-up also warns of plain HTTP, unless the
    service serves HTTPS."""
    plain = auth_warning(Settings(auth="off"), "0.0.0.0")
    tls = Settings(auth="off", ssl_certfile=certs.server_cert, ssl_keyfile=certs.server_key)
    served = auth_warning(tls, "0.0.0.0")
    assert plain is not None and "plain HTTP" in plain
    assert served is not None and "requires no API key" in served and "plain HTTP" not in served
    assert auth_warning(Settings(auth="off"), "127.0.0.1") is None
