"""The emergency reserve journal's records: how one is written, and what a journal's bytes
say when replayed (its reserves, their marks, and the first damage if any).

Each line is one record: the CRC32 of the JSON text as 8 hex digits, a space, the JSON, a
newline. ``journal.py`` says what each record means and what is done with a damaged or
unverified journal; this module only reads and writes them, and touches no file.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["JOURNAL_VERSION", "JournalReserve", "Record", "Replay", "encode", "replay"]

JOURNAL_VERSION: Final = 1

Record = dict[str, Any]


def encode(record: Record) -> bytes:
    """One journal line: checksum, space, JSON, newline."""
    body = json.dumps(record, separators=(",", ":"), sort_keys=True).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


@dataclass(slots=True)
class JournalReserve:
    """A reserve as the journal describes it."""

    namespace: str
    start: int
    end: int
    ledger: str  # where the ledger that granted it lives
    mark: int  # highest ID possibly handed out; start - 1 when none was
    granted_at: float
    retired: str | None = None  # why it will never be served from again
    synced: bool = False
    owner: str | None = None  # the data dir it was granted to (None: a journal before owners)

    def records(self) -> list[Record]:
        """The records that describe it as it is now (for a rewritten journal)."""
        key = {"namespace": self.namespace, "start": self.start}
        records: list[Record] = [
            {
                "type": "reserve",
                **key,
                "end": self.end,
                "ledger": self.ledger,
                "at": self.granted_at,
                **({} if self.owner is None else {"owner": self.owner}),
            }
        ]
        if self.mark >= self.start:
            records.append({"type": "mark", **key, "mark": self.mark})
        if self.retired is not None:
            records.append({"type": "retire", **key, "reason": self.retired})
        return records


@dataclass
class Replay:
    """What a journal's bytes say: its reserves in order, and the first damage if any."""

    reserves: dict[tuple[str, int], JournalReserve]
    records: int
    damage: str | None = None


def replay(data: bytes) -> Replay:
    """Read a journal's records, in order; damage is noted, never raised."""
    result = Replay({}, 0)
    offset = 0
    for line in data.split(b"\n")[:-1]:  # the last piece has no newline: empty or torn
        problem = _apply(result, line)
        if problem is not None and result.damage is None:
            result.damage = f"{problem} at byte {offset}"
        offset += len(line) + 1
    tail = len(data) - offset
    if tail and result.damage is None:
        result.damage = f"the last record is torn ({tail} bytes without a newline) at byte {offset}"
    return result


def _apply(result: Replay, line: bytes) -> str | None:
    """Apply one line to ``result``; return what is wrong with it, if anything."""
    checksum, _, body = line.partition(b" ")
    try:
        if len(checksum) != 8 or int(checksum, 16) != zlib.crc32(body):
            return "a record fails its checksum"
        record = json.loads(body)
    except ValueError:
        return "a record is unreadable"
    if not isinstance(record, dict):
        return "a record is not an object"
    try:
        problem = _apply_record(result.reserves, record)
    except (KeyError, TypeError, ValueError) as exc:
        problem = f"a {record.get('type')!r} record is malformed ({exc!r})"
    if problem is None:
        result.records += 1
    return problem


def _apply_record(reserves: dict[tuple[str, int], JournalReserve], record: Record) -> str | None:
    kind = record["type"]
    if kind == "open":
        return None
    key = (_text(record["namespace"]), _integer(record["start"]))
    reserve = reserves.get(key)
    if kind == "reserve":
        end = _integer(record["end"])
        if reserve is not None or not 1 <= key[1] <= end:
            return f"reserve {key} is granted twice or is empty"
        owner = record.get("owner")
        reserves[key] = JournalReserve(
            key[0],
            key[1],
            end,
            _text(record["ledger"]),
            key[1] - 1,
            float(record["at"]),
            owner=None if owner is None else _text(owner),
        )
        return None
    if reserve is None:
        return f"a {kind!r} record names the unknown reserve {key}"
    if kind == "mark":
        mark = _integer(record["mark"])
        if not reserve.start - 1 <= mark <= reserve.end:
            return f"mark {mark} lies outside reserve {key}"
        reserve.mark = max(reserve.mark, mark)
    elif kind == "retire":
        reserve.retired = reserve.retired or _text(record["reason"])
    elif kind == "synced":
        reserve.synced = True
    else:
        return f"unknown record type {kind!r}"
    return None


def _integer(value: object) -> int:
    if type(value) is not int:
        raise ValueError(f"{value!r} is not an integer")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    return value
