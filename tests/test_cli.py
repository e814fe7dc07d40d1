"""The ``keygen`` command, run as a real subprocess."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keygen import __version__
from keygen.cluster.processes import free_port, free_ports
from tests.support.processes import ServeProcess, keygen


def test_version() -> None:
    """--version prints the package version."""
    result = keygen("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"keygen {__version__}"


def test_verify_passes_and_fails(tmp_path: Path) -> None:
    """verify exits 0 on disjoint ranges and 1, naming the overlap, when two ranges share IDs."""
    good = tmp_path / "good.jsonl"
    good.write_text('{"start": 1, "end": 5, "size": 5}\n{"start": 6, "end": 9, "size": 4}\n')
    result = keygen("verify", str(good))
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith("OK: 2 ranges, 9 IDs")

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"start": 4, "end": 7, "size": 4}\n')
    result = keygen("verify", str(good), str(bad))
    assert result.returncode == 1
    assert "overlap in 'default'" in result.stdout
    assert "VIOLATION" in result.stdout and "(4 duplicate IDs)" in result.stdout


def test_verify_reports_unreadable_input(tmp_path: Path) -> None:
    """verify exits 2 with a message, not a traceback, on a file that is not allocations."""
    junk = tmp_path / "junk.jsonl"
    junk.write_text("hello\n")
    result = keygen("verify", str(junk))
    assert result.returncode == 2
    assert "junk.jsonl:1" in result.stderr and "Traceback" not in result.stderr


def test_invalid_configuration_is_reported_clearly(tmp_path: Path) -> None:
    """A bad setting stops the command with its name, not a traceback."""
    result = keygen("ledger", "status", env={"ID_BLOCK_SIZE": "zero"})
    assert result.returncode == 2
    assert "ID_BLOCK_SIZE" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.e2e
def test_allocate_and_ledger_status_against_a_server(tmp_path: Path) -> None:
    """allocate prints the server's range as JSON, given its URL or only its host:port;
    ledger status shows the counter after it."""
    env = {"KEYGEN_DATA_DIR": str(tmp_path / "data"), "KEYGEN_LEASE_SIZE": "500"}
    server = ServeProcess(env, log=tmp_path / "serve.log").start()
    try:
        result = keygen("allocate", "--size", "42", "--namespace", "orders", "--url", server.url)
        assert result.returncode == 0, result.stderr
        allocated = json.loads(result.stdout)
        assert (allocated["start"], allocated["end"], allocated["size"]) == (1, 42, 42)
        host_port = server.url.removeprefix("http://")  # as `keygen monitor` takes it too
        result = keygen("allocate", "--size", "8", "--namespace", "orders", "--url", host_port)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["start"] == 43
        refused = keygen("allocate", "--size", "0", "--url", server.url)
        assert refused.returncode == 1 and "invalid_request" in refused.stderr
    finally:
        server.stop()
    status = keygen("ledger", "status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) == [
        {"namespace": "orders", "next_id": 501, "headroom": 2**63 - 1 - 500, "grants": 1}
    ]


def test_allocate_reports_an_unreachable_server() -> None:
    """allocate against nothing says it cannot reach the URL, without a traceback."""
    result = keygen("allocate", "--url", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert "cannot reach" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["allocate", "monitor"])
@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--ca-certs", "{dir}/missing.pem"], "--ca-certs {dir}/missing.pem: cannot read it: No "),
        (["--ca-certs", "{dir}/junk.pem"], "--ca-certs {dir}/junk.pem: holds no PEM CA cert"),
        (["--client-cert", "{dir}/junk.pem"], "--client-cert {dir}/junk.pem: not a PEM cert"),
        (
            ["--client-cert", "{dir}/junk.pem", "--client-key", "{dir}/missing.pem"],
            "--client-key {dir}/missing.pem: cannot read it: No such file",
        ),
    ],
    ids=["missing-ca", "junk-ca", "junk-cert", "missing-key"],
)
def test_a_tls_file_that_cannot_be_used_is_named(
    tmp_path: Path, command: str, flags: list[str], named: str
) -> None:
    """A --ca-certs, --client-cert or --client-key file that is missing or not PEM stops
    allocate and monitor with exit 2 and one line naming the option, the file and the cause."""
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    argv = [flag.format(dir=tmp_path) for flag in flags]
    extra = ["--once"] if command == "monitor" else []
    result = keygen(command, "--url", "https://127.0.0.1:9", *argv, *extra)
    assert result.returncode == 2, result
    (line,) = result.stderr.strip().splitlines()
    assert named.format(dir=tmp_path) in line, line


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"KEYGEN_BODY_TIMEOUT": "-1"}, "KEYGEN_BODY_TIMEOUT: Input should be greater than 0"),
        ({"ID_BLOCK_SIZE": "0"}, "ID_BLOCK_SIZE: Input should be greater than or equal to 1"),
        (
            {"KEYGEN_DB_POOL_MIN_SIZE": "5", "KEYGEN_DB_POOL_MAX_SIZE": "2"},
            "configuration: KEYGEN_DB_POOL_MIN_SIZE must not exceed KEYGEN_DB_POOL_MAX_SIZE",
        ),
        ({"REDIS_SENTINEL_HOSTS": "a:1;b:2"}, "REDIS_SENTINEL_HOSTS: 'a:1;b:2' is not host:port"),
        ({"REDIS_SENTINEL_HOSTS": "h:99999"}, "REDIS_SENTINEL_HOSTS: 'h:99999' is not host:port"),
        ({"KEYGEN_DATABASE_URL": "mysql://u:pw@db/x"}, "KEYGEN_DATABASE_URL: must be a postgresql"),
        ({"KEYGEN_DATABASE_URL": "db.example/x"}, "KEYGEN_DATABASE_URL: must be a postgresql"),
    ],
)
def test_a_bad_setting_names_its_variable(env: dict[str, str], named: str) -> None:
    """Each bad setting stops every command at once, exit 2, with the variable's real name
    (prefix included), on one line, without a traceback or a secret."""
    result = keygen("ledger", "status", env=env)
    assert result.returncode == 2, result
    assert named in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "pw" not in result.stderr


def test_serve_help_shows_every_default() -> None:
    """keygen serve --help names each option's default."""
    result = keygen("serve", "--help")
    assert result.returncode == 0
    for default in ("(default: 127.0.0.1)", "(default: 8010)", "(default: 1)"):
        assert default in result.stdout


@pytest.mark.e2e
def test_a_server_error_is_shown_as_the_server_wrote_it(tmp_path: Path) -> None:
    """allocate prints the server's message verbatim: no markup eats its brackets."""
    server = ServeProcess({"KEYGEN_DATA_DIR": str(tmp_path / "data")}, log=tmp_path / "s.log")
    server.start()
    try:
        result = keygen("allocate", "--namespace", "BAD NS", "--url", server.url)
    finally:
        server.stop()
    assert result.returncode == 1
    assert "invalid_request" in result.stderr and "[a-z0-9]" in result.stderr, result.stderr


def test_config_check_on_the_embedded_default(tmp_path: Path) -> None:
    """config check passes on a fresh data dir: the dir is writable, the ledger answers."""
    result = keygen("config", "check", "--json", env={"KEYGEN_DATA_DIR": str(tmp_path / "d")})
    assert result.returncode == 0, result.stderr
    checks = {c["part"]: c for c in json.loads(result.stdout)}
    assert set(checks) == {"data dir", "ledger"} and all(c["ok"] for c in checks.values())


def test_config_check_fails_on_an_unreachable_ledger_and_a_damaged_journal(tmp_path: Path) -> None:
    """A PostgreSQL that does not answer and a torn reserve journal each fail their row, and
    the command exits 1."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "reserve-0.journal").write_bytes(b'{"type": "reserve", "torn')
    env = {
        "KEYGEN_DATA_DIR": str(data),
        "KEYGEN_RESERVE": "on",
        "KEYGEN_DATABASE_URL": "postgresql://keygen@127.0.0.1:9/keygen",
        "KEYGEN_DB_CONNECT_TIMEOUT": "1",
    }
    result = keygen("config", "check", "--json", env=env)
    assert result.returncode == 1, result.stderr
    checks = {c["part"]: c for c in json.loads(result.stdout)}
    assert checks["data dir"]["ok"] is True
    assert checks["ledger"]["ok"] is False and "cannot reach" in checks["ledger"]["detail"]
    assert checks["journal reserve-0.journal"]["ok"] is False


def test_config_check_names_an_unreachable_sentinel_on_one_line(tmp_path: Path) -> None:
    """Sentinels that refuse connections each fail their row with the setting and the cause,
    and the master's row says so in one line, without redis-py's reprs of its clients."""
    ports = free_ports(2)
    env = {
        "KEYGEN_DATA_DIR": str(tmp_path / "data"),
        "REDIS_SENTINEL_HOSTS": ",".join(f"127.0.0.1:{port}" for port in ports),
    }
    result = keygen("config", "check", "--json", env=env)
    assert result.returncode == 1, result.stderr
    checks = {c["part"]: c for c in json.loads(result.stdout)}
    for port in ports:
        sentinel = checks[f"sentinel 127.0.0.1:{port}"]
        assert sentinel["ok"] is False
        assert sentinel["detail"] == f"REDIS_SENTINEL_HOSTS 127.0.0.1:{port}: Connection refused"
    master = checks["redis master"]
    assert master["ok"] is False
    assert master["detail"] == (
        "REDIS_SENTINEL_MASTER_NAME 'mymaster': no Sentinel names a master it holds up"
    )


@pytest.mark.parametrize(
    ("url", "pgsslmode", "warned"),
    [
        ("?sslmode=require", None, "KEYGEN_DATABASE_URL: sslmode=require"),
        ("?sslmode=prefer", None, "KEYGEN_DATABASE_URL: sslmode=prefer"),
        ("?sslmode=allow", None, "KEYGEN_DATABASE_URL: sslmode=allow"),
        ("", "require", "PGSSLMODE: sslmode=require"),
        ("?sslmode=verify-full&sslrootcert=/tmp/ca.crt", "require", None),
        ("?sslmode=disable", None, None),
    ],
)
def test_config_check_warns_when_postgresql_is_not_verified(
    tmp_path: Path, url: str, pgsslmode: str | None, warned: str | None
) -> None:
    """An sslmode that encrypts without checking the server's certificate is warned about
    (naming the setting and verify-full with sslrootcert) without failing the check on its
    own; verify-full, or no TLS at all (refused elsewhere), gets no warning."""
    env = {
        "KEYGEN_DATA_DIR": str(tmp_path / "data"),
        "KEYGEN_DATABASE_URL": f"postgresql://keygen@127.0.0.1:{free_port()}/keygen{url}",
        "KEYGEN_DB_CONNECT_TIMEOUT": "1",
    }
    if pgsslmode is not None:
        env["PGSSLMODE"] = pgsslmode
    result = keygen("config", "check", "--json", env=env)
    checks = {c["part"]: c for c in json.loads(result.stdout)}
    if warned is None:
        assert "ledger tls" not in checks, checks
        return
    tls = checks["ledger tls"]
    assert (tls["ok"], tls["warning"]) == (True, True)
    assert tls["detail"].startswith(f"{warned} does not verify the PostgreSQL server's cert")
    assert "use sslmode=verify-full with sslrootcert=" in tls["detail"]
