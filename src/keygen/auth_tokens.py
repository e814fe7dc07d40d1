"""API key tokens: how one is made, the keyed hash the ledger keeps of it, the server secret
that keys the hash, and the token taken from a request's ``Authorization`` header.

A token is ``kg_`` and 32 random bytes (256 bits, URL-safe base64). It is shown once, when
the key is created; the ledger keeps only ``HMAC-SHA256(server secret, token)``. A token that
random cannot be guessed from its hash, so a slow password hash (argon2, bcrypt) would add
nothing but cost to every request; the secret means that a copy of the ledger (a backup, a
read-only role) is not enough to check a guess, nor to add a key that works. The server
secret is ``KEYGEN_AUTH_SECRET``, or else the file ``auth.secret`` in ``KEYGEN_DATA_DIR``,
made on first use (mode 0600). Instances sharing a PostgreSQL ledger need the same secret:
each key records a fingerprint of the secret that hashed it, and a worker whose secret
differs says so in its log rather than silently refusing the key.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from keygen.auth_scopes import parse_scope
from keygen.config import Settings
from keygen.files import create_once
from keygen.ledgers.base import ApiKeyRecord
from keygen.rates import Rates
from keygen.redact import printable

__all__ = [
    "SECRET_FILENAME",
    "TOKEN_PREFIX",
    "Hmac",
    "bearer_token",
    "digest",
    "load_secret",
    "new_key",
    "secret_id",
]

TOKEN_PREFIX: Final = "kg_"
TOKEN_BYTES: Final = 32
SECRET_FILENAME: Final = "auth.secret"
#: The longest a key's name may be.
MAX_NAME_LENGTH: Final = 100

_BEARER: Final = b"bearer "
_SHA256_BLOCK: Final = 64


def digest(secret: bytes, token: bytes) -> bytes:
    """The keyed hash the ledger keeps of a token."""
    return hmac.digest(secret, token, "sha256")


class Hmac:
    """HMAC-SHA256 under one key, its padded key hashed once (RFC 2104): a request pays two
    SHA-256 compressions of its own, not the key schedule too (a third of ``hmac.digest``)."""

    def __init__(self, secret: bytes) -> None:
        key = hashlib.sha256(secret).digest() if len(secret) > _SHA256_BLOCK else secret
        key = key.ljust(_SHA256_BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def digest(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def secret_id(secret: bytes) -> str:
    """A fingerprint of the server secret, stored with each key (it reveals nothing of it)."""
    return hmac.new(secret, b"keygen server secret id", hashlib.sha256).hexdigest()[:16]


def load_secret(settings: Settings) -> bytes:
    """The server secret: ``KEYGEN_AUTH_SECRET``, else the data dir's ``auth.secret``, made
    (0600) when missing. Several processes making it at once agree on one."""
    if settings.auth_secret is not None:
        return settings.auth_secret.encode()
    path = settings.data_dir / SECRET_FILENAME
    with contextlib.suppress(FileNotFoundError):
        return _read_secret(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    create_once(path, secrets.token_hex(32).encode() + b"\n", 0o600)
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    secret = path.read_bytes().strip()
    if len(secret) < 16:
        raise ValueError(f"{path} holds no usable secret (16 bytes at least)")
    return secret


def new_key(
    name: str, scopes: Sequence[str], secret: bytes, now: float, rates: Rates | None = None
) -> tuple[str, ApiKeyRecord]:
    """A fresh token and the record the ledger keeps of it (its keyed hash, never itself)."""
    if not name.strip() or len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"a key's name must be 1 to {MAX_NAME_LENGTH} characters")
    if not name.isprintable():
        # It goes into the access log, the grants' requested_by and terminals.
        raise ValueError(
            f"a key's name must be printable: '{printable(name)}' holds a control character"
        )
    if not scopes:
        raise ValueError("a key needs at least one scope")
    token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    record = ApiKeyRecord(
        id=secrets.token_hex(6),
        name=name.strip(),
        digest=digest(secret, token.encode()).hex(),
        scopes=tuple(dict.fromkeys(parse_scope(s) for s in scopes)),
        secret_id=secret_id(secret),
        created_at=now,
        rates=rates or Rates(),
    )
    return token, record


def bearer_token(authorization: bytes | None) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` header's value (None: no header)."""
    if authorization is None:
        return None
    if authorization[:7].lower() == _BEARER:
        return authorization[7:].strip()
    return b""  # some other scheme: not a key
