"""API keys: the table of keys each worker checks requests against, and the lease that
bounds how long a table read stays in force. What a key may do is ``auth_scopes.py``; its
token, keyed hash and the server secret are ``auth_tokens.py``.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from keygen.auth_scopes import OPEN, Grants
from keygen.auth_tokens import Hmac, bearer_token, load_secret, new_key, secret_id
from keygen.config import DEFAULT_AUTH_LEASE_SECONDS, AuthMode
from keygen.errors import KeygenError, KeysUnavailable, Unauthorized
from keygen.ledgers.base import ApiKeyRecord, Ledger

#: ``KeyStore`` and what a request's check needs beside it (its result, the header's token;
#: a key's making, for the tests that serve one), in one place for the HTTP edge.
__all__ = [
    "ENFORCED_MARKER",
    "OPEN",
    "Grants",
    "KeyStore",
    "bearer_token",
    "load_secret",
    "new_key",
]

log = logging.getLogger(__name__)

#: Written to the data dir once a worker has seen a key: a later start whose ledger holds no
#: key (replaced, or lost) still requires one. Its absence opens nothing: an instance that
#: cannot read the key table refuses requests whether the file is there or not.
ENFORCED_MARKER: Final = "auth.enforced"
#: Checked tokens remembered between two reads of the table (one per key in use: only
#: tokens of keys are remembered, so random ones cannot fill it).
MAX_REMEMBERED_TOKENS: Final = 10_000


def _when(at: float | None) -> str:
    if at is None:
        return "never"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


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
