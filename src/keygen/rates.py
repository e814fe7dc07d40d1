"""Rate limits as an operator writes them: a key's (``keygen keys create
--requests-per-second N --ids-per-second N --ids-per-day N``) and the namespaces'
(``KEYGEN_NAMESPACE_LIMITS``). ``keygen/quotas.py`` enforces them.

``KEYGEN_NAMESPACE_LIMITS`` is a ``;``-separated list of ``<namespace glob>:<limit>,...``
where a limit is ``requests_per_second=N``, ``ids_per_second=N`` or ``ids_per_day=N``; the
first glob that matches a namespace gives its limits, and each namespace it matches is
counted on its own::

    KEYGEN_NAMESPACE_LIMITS = "orders:ids_per_day=100000000;shop-*:requests_per_second=200"
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, fields
from typing import Final

__all__ = ["NamespaceRule", "Rates", "parse_namespace_limits"]

#: A namespace glob: the namespace alphabet and fnmatch's ``*``, ``?``, ``[...]``, ``!``.
_GLOB: Final = re.compile(r"[a-z0-9_.\-*?\[\]!]{1,64}")
#: The largest limit: a count that fits the ledger's BIGINT columns.
MAX_RATE: Final = 2**62


@dataclass(frozen=True, slots=True)
class Rates:
    """Limits on one subject (a key, a namespace); None is no limit."""

    requests_per_second: int | None = None
    ids_per_second: int | None = None
    ids_per_day: int | None = None

    def __post_init__(self) -> None:
        for name, value in self.items():
            if not 1 <= value <= MAX_RATE:
                raise ValueError(f"{name} must be between 1 and {MAX_RATE}, got {value}")

    def items(self) -> list[tuple[str, int]]:
        """The limits that are set, by name."""
        return [
            (field.name, value)
            for field in fields(self)
            if (value := getattr(self, field.name)) is not None
        ]

    def __bool__(self) -> bool:
        return bool(self.items())

    def describe(self) -> str:
        """``requests_per_second=10, ids_per_day=1000`` (or ``none``)."""
        return ", ".join(f"{name}={value}" for name, value in self.items()) or "none"


@dataclass(frozen=True, slots=True)
class NamespaceRule:
    """The limits of the namespaces one glob matches."""

    glob: str
    rates: Rates

    def matches(self, namespace: str) -> bool:
        return fnmatch.fnmatchcase(namespace, self.glob)


def parse_namespace_limits(text: str) -> tuple[NamespaceRule, ...]:
    """``KEYGEN_NAMESPACE_LIMITS`` as rules, in order; ValueError saying what is wrong."""
    rules = []
    names = {field.name for field in fields(Rates)}
    for entry in filter(None, (part.strip() for part in text.split(";"))):
        glob, colon, limits = entry.partition(":")
        glob = glob.strip()
        if not colon or not _GLOB.fullmatch(glob):
            raise ValueError(
                f"{entry!r} is not '<namespace glob>:<limit>=N,...' (such as "
                "'orders:requests_per_second=100,ids_per_day=1000000')"
            )
        values: dict[str, int] = {}
        for item in filter(None, (part.strip() for part in limits.split(","))):
            name, equals, number = (piece.strip() for piece in item.partition("="))
            if name not in names or not equals or not number.isdigit():
                raise ValueError(
                    f"{item!r} in {glob!r} is not <limit>=N with a limit among "
                    f"{', '.join(sorted(names))}"
                )
            values[name] = int(number)
        if not values:
            raise ValueError(f"{glob!r} names no limit")
        rules.append(NamespaceRule(glob, Rates(**values)))
    return tuple(rules)
