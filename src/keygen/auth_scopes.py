"""What an API key may do: its scopes, as given to ``keygen keys create --scope``, and the
``Grants`` they compile to for the per-request check.

Scopes:

    allocate:<glob>   POST /allocate in the namespaces the glob matches (fnmatch: *, ?, [..])
    read              /health in detail, /metrics, /metrics/history, /alerts, /ledger,
                      /dashboard and /static, /docs, /openapi.json
    admin             everything
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from keygen.rates import Rates
from keygen.redact import printable

__all__ = ["ALLOCATE_PREFIX", "OPEN", "SCOPE_ADMIN", "SCOPE_READ", "Grants", "parse_scope"]

SCOPE_READ: Final = "read"
SCOPE_ADMIN: Final = "admin"
ALLOCATE_PREFIX: Final = "allocate:"

#: A namespace glob: the namespace alphabet and fnmatch's ``*``, ``?``, ``[...]``, ``!``.
_GLOB: Final = re.compile(r"[a-z0-9_.\-*?\[\]!]{1,64}")


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
            label=f"{key_id} ({printable(name)})",  # an older key's name may be anything
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
