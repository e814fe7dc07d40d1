"""API keys: tokens, their keyed hashes, scope matching, and the table a worker checks."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import stat
import time
from pathlib import Path
from unittest.mock import patch

import pytest

from keygen.auth import ENFORCED_MARKER, KeyStore
from keygen.auth_scopes import Grants, parse_scope
from keygen.auth_tokens import (
    SECRET_FILENAME,
    TOKEN_PREFIX,
    Hmac,
    bearer_token,
    digest,
    load_secret,
    new_key,
    secret_id,
)
from keygen.config import Settings
from keygen.errors import KeysUnavailable, Unauthorized
from tests.support.fakes import FakeLedger

pytestmark = pytest.mark.anyio

SECRET = b"s" * 32


def grants(*scopes: str) -> Grants:
    return Grants.of("k1", "test", scopes)


@pytest.mark.parametrize(
    ("scope", "namespace", "allowed"),
    [
        ("allocate:orders", "orders", True),
        ("allocate:orders", "orders2", False),
        ("allocate:orders", "default", False),
        ("allocate:shop-*", "shop-eu", True),
        ("allocate:shop-*", "shop-", True),
        ("allocate:shop-*", "shops", False),
        ("allocate:shop-?", "shop-1", True),
        ("allocate:shop-?", "shop-12", False),
        ("allocate:[ab]x", "bx", True),
        ("allocate:[!ab]x", "ax", False),
        ("allocate:*", "anything.at_all", True),
        ("admin", "orders", True),
        ("read", "orders", False),
    ],
)
def test_allocate_scopes_match_namespaces_as_fnmatch_globs(
    scope: str, namespace: str, allowed: bool
) -> None:
    """allocate:<glob> admits exactly the namespaces fnmatch matches (the whole name); admin
    admits all, read none."""
    assert grants(scope).may_allocate(namespace) is allowed


def test_glob_matches_the_whole_namespace_not_a_prefix() -> None:
    """A glob without a star does not admit longer names, nor one with a newline."""
    key = grants("allocate:orders")
    assert not key.may_allocate("orders\n")
    assert not key.may_allocate("xorders")


def test_read_and_admin_scopes() -> None:
    """read gives reading only; admin gives reading and every namespace; allocate no reading."""
    assert grants("read").read and not grants("read").allocate_all
    assert grants("admin").read and grants("admin").allocate_all
    assert not grants("allocate:*").read


@pytest.mark.parametrize("scope", ["allocate:orders", "allocate:shop-*", "allocate:*", "read"])
def test_valid_scopes_are_taken(scope: str) -> None:
    """The documented scopes parse as themselves."""
    assert parse_scope(scope) == scope


@pytest.mark.parametrize(
    "scope", ["", "write", "allocate:", "allocate:Orders", "allocate:a b", "allocate:" + "a" * 65]
)
def test_invalid_scopes_are_refused(scope: str) -> None:
    """Anything else is refused with a message naming the valid forms."""
    with pytest.raises(ValueError, match="is not a scope"):
        parse_scope(scope)


def test_digest_is_hmac_sha256_under_the_secret() -> None:
    """The kept hash is HMAC-SHA256(secret, token): another secret gives another hash."""
    token = b"kg_abc"
    assert digest(SECRET, token) == hmac.new(SECRET, token, hashlib.sha256).digest()
    assert digest(b"t" * 32, token) != digest(SECRET, token)
    assert secret_id(SECRET) != secret_id(b"t" * 32)
    assert SECRET.hex() not in secret_id(SECRET)


@pytest.mark.parametrize("secret", [b"k" * 16, b"k" * 64, b"\xff" * 65, b"x" * 200])
def test_the_precomputed_hmac_is_hmac_sha256(secret: bytes) -> None:
    """The per-request HMAC (pads hashed once) equals the standard library's, for secrets
    shorter and longer than SHA-256's block."""
    for token in (b"", b"kg_abc", b"t" * 300):
        assert Hmac(secret).digest(token) == hmac.digest(secret, token, "sha256")


def test_a_glob_list_mixes_exact_names_and_wildcards() -> None:
    """Several allocate scopes admit the union of their namespaces."""
    key = grants("allocate:orders", "allocate:shop-*", "allocate:a?c")
    assert [key.may_allocate(n) for n in ("orders", "shop-x", "abc", "default")] == [
        True,
        True,
        True,
        False,
    ]


def test_a_new_key_keeps_only_the_hash_of_its_token() -> None:
    """The record names the token nowhere; the token is long, random, prefixed."""
    token, record = new_key("billing", ["allocate:orders", "read"], SECRET, 1.0)
    other, _ = new_key("billing", ["read"], SECRET, 1.0)
    assert token.startswith(TOKEN_PREFIX) and len(token) >= 40 and token != other
    assert token not in repr(record)
    assert record.digest == digest(SECRET, token.encode()).hex()
    assert record.scopes == ("allocate:orders", "read")
    assert record.secret_id == secret_id(SECRET)


def test_a_key_needs_a_name_and_a_scope() -> None:
    """No scope, or an empty name, is refused."""
    with pytest.raises(ValueError):
        new_key("x", [], SECRET, 1.0)
    with pytest.raises(ValueError):
        new_key(" ", ["read"], SECRET, 1.0)


@pytest.mark.parametrize("name", ["ops\n2026-12-08 INFO forged", "ops\x1b[2J", "ops\u202e", "a\tb"])
def test_a_key_name_with_a_control_character_is_refused(name: str) -> None:
    """A name that could forge a log line or drive a terminal (a newline, an escape, a bidi
    override, a tab) is refused at creation, and the refusal shows it escaped."""
    with pytest.raises(ValueError, match="must be printable") as refused:
        new_key(name, ["read"], SECRET, 1.0)
    assert str(refused.value).isprintable()
    _, record = new_key("ops team \u00e9t\u00e9", ["read"], SECRET, 1.0)  # letters and spaces pass
    assert record.name == "ops team \u00e9t\u00e9"


def test_an_older_keys_name_is_escaped_in_what_its_requests_record() -> None:
    """A key created before names were checked carries its name escaped into the label that
    the access log and the grants' requested_by show."""
    label = Grants.of("k1", "evil\n2026-12-08 forged", ["read"]).label
    assert label == "k1 (evil\\n2026-12-08 forged)" and "\n" not in label


def test_bearer_token_is_read_from_the_authorization_header() -> None:
    """Bearer in any case gives the token; another scheme gives an empty one; none gives None."""
    assert bearer_token(b"Bearer kg_x") == b"kg_x"
    assert bearer_token(b"bearer  kg_x ") == b"kg_x"
    assert bearer_token(b"Basic dTpw") == b""
    assert bearer_token(None) is None


def store(mode: str = "auto", tmp_path: Path | None = None) -> tuple[KeyStore, FakeLedger]:
    ledger = FakeLedger()
    marker = tmp_path / ENFORCED_MARKER if tmp_path is not None else None
    return KeyStore(ledger, SECRET, mode, marker=marker), ledger  # type: ignore[arg-type]


async def test_auto_requires_keys_once_one_exists(tmp_path: Path) -> None:
    """auto: open while the ledger holds no key, required from the first one, and still
    required after every key is revoked (revoking must not open the service)."""
    keys, ledger = store("auto", tmp_path)
    await keys.refresh()
    assert not keys.enforced and keys.authenticate(None).allocate_all
    token, record = new_key("a", ["read"], SECRET, 1.0)
    await ledger.add_api_key(record)
    await keys.refresh()
    assert keys.enforced
    with pytest.raises(Unauthorized):
        keys.authenticate(None)
    assert keys.authenticate(token.encode()).key_id == record.id
    await ledger.revoke_api_key(record.id)
    await keys.refresh()
    assert keys.enforced
    with pytest.raises(Unauthorized, match="unknown or revoked"):
        keys.authenticate(token.encode())
    assert (tmp_path / ENFORCED_MARKER).exists()


async def test_a_checked_token_is_remembered_until_the_table_is_read_again() -> None:
    """A key's token is hashed once per read of the table, not once per request; a token
    that is no key is hashed every time (it is never remembered, so none can fill it)."""
    keys, ledger = store("required")
    token, record = new_key("a", ["read"], SECRET, 1.0)
    await ledger.add_api_key(record)
    await keys.refresh()
    with patch.object(keys._hmac, "digest", wraps=keys._hmac.digest) as digest:
        for _ in range(3):
            assert keys.authenticate(token.encode()).key_id == record.id
        assert digest.call_count == 1
        await keys.refresh()
        keys.authenticate(token.encode())
        assert digest.call_count == 2
        for _ in range(2):
            with pytest.raises(Unauthorized):
                keys.authenticate(b"kg_not_a_key")
        assert digest.call_count == 4


async def test_a_restart_that_cannot_read_the_keys_refuses_with_503(tmp_path: Path) -> None:
    """Once keys were seen, a worker that cannot read the table at start refuses (503), it
    does not serve unchecked; 'required' does the same with no memory at all."""
    keys, ledger = store("auto", tmp_path)
    _, record = new_key("a", ["read"], SECRET, 1.0)
    await ledger.add_api_key(record)
    await keys.refresh()
    restarted, down = store("auto", tmp_path)
    down.down = True
    assert not await restarted.refresh_logged()
    with pytest.raises(KeysUnavailable):
        restarted.authenticate(b"kg_x")
    required, down = store("required")
    down.down = True
    await required.refresh_logged()
    with pytest.raises(KeysUnavailable):
        required.authenticate(None)


async def test_the_last_table_stays_while_the_ledger_is_down() -> None:
    """A failed refresh keeps the keys read before."""
    keys, ledger = store("required")
    token, record = new_key("a", ["read"], SECRET, 1.0)
    await ledger.add_api_key(record)
    await keys.refresh()
    ledger.down = True
    assert not await keys.refresh_logged()
    assert keys.authenticate(token.encode()).read


async def test_a_key_hashed_with_another_secret_is_refused_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A key made under another server secret cannot be checked here: refused, and logged."""
    keys, ledger = store("required")
    token, record = new_key("elsewhere", ["read"], b"o" * 32, 1.0)
    await ledger.add_api_key(record)
    await keys.refresh()
    with pytest.raises(Unauthorized):
        keys.authenticate(token.encode())
    assert "another server secret" in caplog.text


async def test_off_checks_nothing() -> None:
    """KEYGEN_AUTH=off: every request may do everything, whatever keys exist."""
    keys = KeyStore(None, b"", "off")
    assert not keys.enforced
    assert keys.authenticate(b"garbage").allocate_all


def test_the_server_secret_is_made_once_in_the_data_dir(tmp_path: Path) -> None:
    """Unset KEYGEN_AUTH_SECRET: a random secret is made in the data dir (0600) and reused."""
    settings = Settings(_env_file=None, data_dir=tmp_path)
    first = load_secret(settings)
    assert load_secret(settings) == first and len(first) >= 32
    mode = stat.S_IMODE((tmp_path / SECRET_FILENAME).stat().st_mode)
    assert mode == 0o600
    assert list(tmp_path.iterdir()) == [tmp_path / SECRET_FILENAME]


def test_the_configured_secret_wins(tmp_path: Path) -> None:
    """KEYGEN_AUTH_SECRET is the secret; no file is made; it never shows in repr(Settings)."""
    settings = Settings(_env_file=None, data_dir=tmp_path, auth_secret="x" * 40)
    assert load_secret(settings) == b"x" * 40
    assert not (tmp_path / SECRET_FILENAME).exists()
    assert "x" * 40 not in repr(settings)
    assert dataclasses.is_dataclass(Grants)


async def test_a_start_that_cannot_read_the_keys_refuses_even_without_the_marker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """auto, keys in the ledger, auth.enforced deleted, the ledger down at start: requests
    are refused (503 keys_unavailable), and the log says that no table was read."""
    keys, ledger = store("auto", tmp_path)
    _, record = new_key("a", ["read"], SECRET, 1.0)
    await ledger.add_api_key(record)
    await keys.refresh()
    (tmp_path / ENFORCED_MARKER).unlink()
    restarted, down = store("auto", tmp_path)
    down.down = True
    assert not await restarted.refresh_logged()
    assert restarted.enforced
    with pytest.raises(KeysUnavailable) as refused:
        restarted.authenticate(None)
    assert refused.value.headers()["Retry-After"] == "2"
    assert "none was read yet" in caplog.text and "stays in force" not in caplog.text


async def test_a_revoked_key_stops_working_within_the_lease_while_the_ledger_is_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The table read last stays in force while the ledger is down, for the lease only:
    then every key is refused (503) until the table is read again."""
    ledger = FakeLedger()
    keys = KeyStore(ledger, SECRET, "auto", lease_seconds=0.2)
    token, record = new_key("a", ["read"], SECRET, 1.0)
    await ledger.add_api_key(record)
    await keys.refresh()
    await ledger.revoke_api_key(record.id)  # unseen: the ledger goes down before a read
    ledger.down = True
    assert not await keys.refresh_logged()
    assert keys.authenticate(token.encode()).read  # within the lease
    deadline = time.monotonic() + 5
    while keys.usable:  # the lease's timer runs on this loop
        assert time.monotonic() < deadline, "the key table's lease did not end within 5 s"
        await asyncio.sleep(0.05)
    with pytest.raises(KeysUnavailable, match="KEYGEN_AUTH_LEASE_SECONDS"):
        keys.authenticate(token.encode())
    assert "no longer trusted" in caplog.text
    ledger.down = False
    await keys.refresh()
    with pytest.raises(Unauthorized):
        keys.authenticate(token.encode())
    await keys.aclose()


async def test_a_ledger_without_keys_beside_the_marker_opens_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """auth.enforced kept but the ledger holds no key (replaced, or lost): keys stay
    required, none is valid, and the log says why."""
    (tmp_path / ENFORCED_MARKER).write_text("seen\n")
    keys, _ = store("auto", tmp_path)
    await keys.refresh()
    assert keys.enforced
    with pytest.raises(Unauthorized):
        keys.authenticate(None)
    assert "the ledger was replaced or lost" in caplog.text
