"""The range: what a client receives, and what every layer hands around."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import msgspec

from keygen.constants import SOURCE_POSTGRESQL, SOURCE_REDIS, SOURCE_RESERVE, SOURCE_SQLITE

__all__ = ["AllocatedRange", "IdRange"]

SOURCES = (SOURCE_REDIS, SOURCE_POSTGRESQL, SOURCE_RESERVE, SOURCE_SQLITE)


class IdRange(msgspec.Struct, frozen=True, gc=False):
    """IDs ``start..end`` of a namespace, both inclusive.

    A frozen Struct, not a frozen dataclass: one is made per request, and a frozen
    dataclass's ``__init__`` (``object.__setattr__`` per field) costs about 14 times as much.
    """

    namespace: str
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start + 1


class AllocatedRange(msgspec.Struct, frozen=True):
    """IDs ``start..end`` (inclusive), the caller's alone: the body of a 200 from
    ``POST /allocate``, as the service writes it and the client reads it."""

    start: Annotated[int, msgspec.Meta(description="First ID of the range.")]
    end: Annotated[
        int, msgspec.Meta(description="Last ID of the range (inclusive): end - start + 1 == size.")
    ]
    size: int
    namespace: str
    # Documented as an enum, read as any string: a newer server may name a new layer.
    source: Annotated[
        str,
        msgspec.Meta(
            description="The layer that served the request.",
            extra_json_schema={"enum": list(SOURCES)},
        ),
    ]
    timestamp: Annotated[float, msgspec.Meta(description="Unix time the range was handed out.")]

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.end + 1))
