"""The range: what a client receives, and what every layer hands around."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class IdRange:
    """IDs ``start..end`` of a namespace, both inclusive."""

    namespace: str
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start + 1
