"""API keys: their tokens, the keyed hash the ledger keeps of each, scopes, and the table of
keys each worker checks requests against.

A token is ``kg_`` and 32 random bytes (256 bits, URL-safe base64). It is shown once, when
the key is created; the ledger keeps only ``HMAC-SHA256(server secret, token)``. A token that
random cannot be guessed from its hash, so a slow password hash (argon2, bcrypt) would add
nothing but cost to every request; the secret means that a copy of the ledger (a backup, a
read-only role) is not enough to check a guess, nor to add a key that works. The server
secret is ``KEYGEN_AUTH_SECRET``, or else the file ``auth.secret`` in ``KEYGEN_DATA_DIR``,
made on first use (mode 0600). Instances sharing a PostgreSQL ledger need the same secret:
each key records a fingerprint of the secret that hashed it, and a worker whose secret
differs says so in its log rather than silently refusing the key.

Each worker reads the whole key table every ``KEYGEN_AUTH_REFRESH_INTERVAL`` seconds into a
dict from digest to what the key may do (``Grants``); checking a request is one HMAC and one
dict lookup, never a ledger round trip. A new or revoked key takes effect within an interval.

It fails closed. Until a worker has read the table, it refuses every request (503
``keys_unavailable``), whatever ``KEYGEN_AUTH`` (but ``off``) and whatever is in the data dir:
whether keys are required is the ledger's to say, not a file's that can be lost. While the
ledger cannot be read, the last table read stays in force for ``KEYGEN_AUTH_LEASE_SECONDS``
(a lease), then every request is refused until a read succeeds: a revoked key stops working
within the lease even while the ledger is down. ``auth.enforced`` in the data dir only ever
adds a refusal: with it, a ledger that holds no key (replaced, or lost) opens nothing.

Scopes:

    allocate:<glob>   POST /allocate in the namespaces the glob matches (fnmatch: *, ?, [..])
    read              /health in detail, /metrics, /metrics/history, /alerts, /ledger,
                      /dashboard and /static, /docs, /openapi.json
    admin             everything
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from keygen.config import DEFAULT_AUTH_LEASE_SECONDS, AuthMode, Settings
from keygen.errors import KeygenError, KeysUnavailable, Unauthorized
from keygen.ledgers.base import ApiKeyRecord, Ledger
from keygen.rates import Rates

__all__ = [
    "OPEN",
    "SCOPE_ADMIN",
    "SCOPE_READ",
    "TOKEN_PREFIX",
    "Grants",
    "Hmac",
    "KeyStore",
    "bearer_token",
    "digest",
    "load_secret",
    "new_key",
    "parse_scope",
    "secret_id",
]

log = logging.getLogger(__name__)

TOKEN_PREFIX: Final = "kg_"
TOKEN_BYTES: Final = 32
SCOPE_READ: Final = "read"
SCOPE_ADMIN: Final = "admin"
ALLOCATE_PREFIX: Final = "allocate:"
SECRET_FILENAME: Final = "auth.secret"
#: Written to the data dir once a worker has seen a key: a later start whose ledger holds no
#: key (replaced, or lost) still requires one. Its absence opens nothing: an instance that
#: cannot read the key table refuses requests whether the file is there or not.
ENFORCED_MARKER: Final = "auth.enforced"
#: The longest a key's name may be.
MAX_NAME_LENGTH: Final = 100

#: A namespace glob: the namespace alphabet and fnmatch's ``*``, ``?``, ``[...]``, ``!``.
_GLOB: Final = re.compile(r"[a-z0-9_.\-*?\[\]!]{1,64}")
_BEARER: Final = b"bearer "
#: Checked tokens remembered between two reads of the table (one per key in use: only
#: tokens of keys are remembered, so random ones cannot fill it).
MAX_REMEMBERED_TOKENS: Final = 10_000
_SHA256_BLOCK: Final = 64


@dataclass(frozen=True, slots=True)
class Grants:
    """What one key may do, compiled for the per-request check."""

    key_id: str
    name: str
    admin: bool = False
    read: bool = False
    allocate_all: bool = False
    #: Namespaces named without a wildcard: a set lookup.
    allocate_exact: frozenset[str] = frozenset()
    #: The globs with a wildcard, as one regular expression: one match.
    allocate_pattern: re.Pattern[str] | None = None
    #: Its rate limits; None when it has none (one test per request).
    rates: Rates | None = None
    #: ``<id> (<name>)``: how the audit trail names it.
    label: str = ""

    @classmethod
    def of(
        cls, key_id: str, name: str, scopes: Iterable[str], rates: Rates | None = None
    ) -> Grants:
        scopes = tuple(scopes)
        admin = SCOPE_ADMIN in scopes
        globs = [s.removeprefix(ALLOCATE_PREFIX) for s in scopes if s.startswith(ALLOCATE_PREFIX)]
        wild = [glob for glob in globs if any(c in glob for c in "*?[")]
        return cls(
            key_id,
            name,
            admin=admin,
            read=admin or SCOPE_READ in scopes,
            allocate_all=admin or "*" in globs,
            allocate_exact=frozenset(glob for glob in globs if glob not in wild),
            allocate_pattern=(
                re.compile("|".join(f"(?:{fnmatch.translate(glob)})" for glob in wild))
                if wild
                else None
            ),
            rates=rates or None,
            label=f"{key_id} ({name})",
        )

    def may_allocate(self, namespace: str) -> bool:
        if self.allocate_all or namespace in self.allocate_exact:
            return True
        return (
            self.allocate_pattern is not None and self.allocate_pattern.match(namespace) is not None
        )


#: What a request may do when no key is required: everything.
OPEN: Final = Grants("", "", admin=True, read=True, allocate_all=True)


def parse_scope(text: str) -> str:
    """A scope as given to ``keygen keys create --scope``; ValueError when it is none."""
    scope = text.strip()
    if scope in (SCOPE_READ, SCOPE_ADMIN):
        return scope
    if scope.startswith(ALLOCATE_PREFIX) and _GLOB.fullmatch(scope.removeprefix(ALLOCATE_PREFIX)):
        return scope
    raise ValueError(
        f"{text!r} is not a scope: 'read', 'admin' or 'allocate:<namespace glob>' "
        "(such as allocate:orders, allocate:shop-*, allocate:*)"
    )


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
    made = secrets.token_hex(32).encode()
    temporary = path.with_name(f".{SECRET_FILENAME}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, made + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temporary, path)  # fails if another process made it first: theirs counts
    except FileExistsError:
        pass
    finally:
        temporary.unlink()
    return _read_secret(path)


def _when(at: float | None) -> str:
    if at is None:
        return "never"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


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


class KeyStore:
    """This worker's copy of the key table, and the check of each request against it.

    Args:
        ledger: where the keys are; None only when ``mode`` is ``off``.
        secret: the server secret.
        mode: ``KEYGEN_AUTH``.
        marker: the data dir's ``auth.enforced`` file (None: no such memory).
    """

    def __init__(
        self,
        ledger: Ledger | None,
        secret: bytes,
        mode: AuthMode,
        *,
        refresh_interval: float = 2.0,
        lease_seconds: float = DEFAULT_AUTH_LEASE_SECONDS,
        marker: Path | None = None,
    ) -> None:
        self.ledger = ledger
        self.mode = mode
        self.refresh_interval = refresh_interval
        self.lease_seconds = lease_seconds
        self.marker = marker
        self.secret_id = secret_id(secret)
        self._hmac = Hmac(secret)
        self._by_digest: dict[bytes, Grants] = {}
        #: Tokens of keys checked since the table was last read, so that a key's next
        #: requests cost a dict lookup rather than an HMAC (about 4 % of a request's
        #: instructions); forgotten at every read of the table, so revoking still takes
        #: effect within the refresh interval.
        self._by_token: dict[bytes, Grants] = {}
        #: Whether requests are checked; read on every request, so kept as a plain attribute.
        #: Until the table is read, they are (and refused): nothing says keys are not needed.
        self.enforced = mode != "off"
        self.loaded = mode == "off"  # the table was read at least once
        #: The table read is in force: read once, and again within the lease.
        self.usable = self.loaded
        self.read_at: float | None = None  # time.time() of the last successful read
        self.keys = 0  # keys in the table, revoked ones included
        self.active = 0
        self._foreign: set[str] = set()  # keys hashed with another secret, already reported
        self._failing = False
        self._lease: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    # -- the check of a request -------------------------------------------------------------

    def authenticate(self, token: bytes | None) -> Grants:
        """What a request carrying ``token`` (None: no Authorization header) may do.

        Raises:
            Unauthorized: a key is required and the token is missing, unknown or revoked.
            KeysUnavailable: a key is required and the table has not been read yet.
        """
        if not self.enforced:
            return OPEN
        if not self.usable:
            raise KeysUnavailable(
                self.unavailable(), retry_after=max(1, round(self.refresh_interval))
            )
        if not token:
            raise Unauthorized("an API key is required: Authorization: Bearer <token>")
        grants = self._by_token.get(token)
        if grants is not None:
            return grants
        grants = self._by_digest.get(self._hmac.digest(token))
        if grants is None:
            raise Unauthorized("the API key is unknown or revoked")
        if len(self._by_token) < MAX_REMEMBERED_TOKENS:
            self._by_token[token] = grants
        return grants

    def unavailable(self) -> str:
        """Why requests are refused for want of a key table in force ("" when they are not)."""
        if self.usable:
            return ""
        if not self.loaded:
            return "this instance could not read the API keys from the ledger yet"
        return (
            f"this instance could not read the API keys from the ledger for more than "
            f"KEYGEN_AUTH_LEASE_SECONDS ({self.lease_seconds:g} s): the table it read last "
            "is no longer trusted (a key may have been revoked since)"
        )

    # -- the table --------------------------------------------------------------------------

    def load(self, records: Sequence[ApiKeyRecord]) -> None:
        """Replace the table with ``records`` (the ledger's every key)."""
        table: dict[bytes, Grants] = {}
        for record in records:
            if record.revoked_at is not None:
                continue
            if record.secret_id != self.secret_id:
                if record.id not in self._foreign:
                    self._foreign.add(record.id)
                    log.error(
                        "API key %s (%r) was hashed with another server secret than this "
                        "instance's: it is refused here. Give every instance the same "
                        "KEYGEN_AUTH_SECRET",
                        record.id,
                        record.name,
                    )
                continue
            table[bytes.fromhex(record.digest)] = Grants.of(
                record.id, record.name, record.scopes, record.rates
            )
        changed = (len(records), len(table)) != (self.keys, self.active) or not self.usable
        self._by_digest = table
        self._by_token = {}
        self.keys, self.active = len(records), len(table)
        self.loaded = self.usable = True
        self.read_at = time.time()
        self._renew_lease()
        # "auto": required as soon as one key exists. A revoked key still counts: revoking
        # the last key must not open the service to everyone.
        remembered = self.marker is not None and self.marker.exists()
        self.enforced = self.mode == "required" or (
            self.mode == "auto" and (self.keys > 0 or remembered)
        )
        if self.mode == "auto" and self.keys == 0 and remembered and changed:
            log.error(
                "API keys: the ledger holds no key, but %s says this instance saw keys in it: "
                "the ledger was replaced or lost? Keys stay required (none is valid); create "
                "one (keygen keys create), or remove %s to serve without keys",
                self.marker,
                self.marker,
            )
        if self.enforced and self.mode == "auto" and self.marker is not None:
            self._remember_enforced()
        if changed:
            log.info(
                "API keys: %d active of %d; keys %s",
                self.active,
                self.keys,
                "required" if self.enforced else "not required",
            )

    def _renew_lease(self) -> None:
        if self._lease is not None:
            self._lease.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # loaded outside the service (a tool): no lease to keep
            return
        self._lease = loop.call_later(self.lease_seconds, self._lease_expired)

    def _lease_expired(self) -> None:
        """Not read for a lease: refuse every request until the table is read again."""
        self._lease = None
        if self.mode == "off":
            return
        self.usable = False
        self.enforced = True
        log.error(
            "API keys: the key table could not be read for %g s (KEYGEN_AUTH_LEASE_SECONDS): "
            "the one read at %s is no longer trusted; every request is refused (503 "
            "keys_unavailable) until the ledger answers",
            self.lease_seconds,
            _when(self.read_at),
        )

    def _remember_enforced(self) -> None:
        assert self.marker is not None
        if not self.marker.exists():
            with contextlib.suppress(OSError):
                self.marker.parent.mkdir(parents=True, exist_ok=True)
                self.marker.write_text("API keys exist in this instance's ledger\n")

    async def refresh(self) -> None:
        """Read the key table from the ledger once.

        Raises:
            KeygenError: the ledger could not be read (the table in force stays).
        """
        assert self.ledger is not None
        self.load(await self.ledger.api_keys())

    def start(self) -> None:
        """Refresh in the background, every ``refresh_interval``."""
        if self.mode != "off" and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval)
            await self.refresh_logged()

    async def refresh_logged(self) -> bool:
        """``refresh``, logging a failure (once until it works again) instead of raising."""
        try:
            async with asyncio.timeout(max(1.0, 2 * self.refresh_interval)):
                await self.refresh()
        except (KeygenError, TimeoutError) as exc:
            if not self._failing:
                self._failing = True
                if not self.loaded:
                    log.warning(
                        "API keys: cannot read the key table (%s); none was read yet, so "
                        "every request is refused (503 keys_unavailable) until one is",
                        exc or "timed out",
                    )
                else:
                    log.warning(
                        "API keys: cannot read the key table (%s); the one read at %s (%d "
                        "keys, %d active) stays in force for KEYGEN_AUTH_LEASE_SECONDS (%g s) "
                        "after that read, then every request is refused until one is read",
                        exc or "timed out",
                        _when(self.read_at),
                        self.keys,
                        self.active,
                        self.lease_seconds,
                    )
            return False
        except Exception:
            log.exception("API keys: reading the key table failed")
            return False
        if self._failing:
            self._failing = False
            log.info("API keys: the key table is read again")
        return True

    async def aclose(self) -> None:
        if self._lease is not None:
            self._lease.cancel()
            self._lease = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
