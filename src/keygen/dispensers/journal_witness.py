"""The journal's witness: what this boot last wrote to a journal, kept outside the data dir.

A journal cut at a record boundary, or restored from an earlier copy, is a well-formed file:
its checksums and records cannot say that marks are missing. What can is a record of the
journal kept where a copy or a restore of the data dir does not reach: the *witness*, a small
file in memory-backed storage (``/dev/shm`` by default, ``KEYGEN_RESERVE_WITNESS_DIR``), named
after the journal's resolved path and holding the kernel's boot ID, the journal's length and
the SHA-256 of its bytes, rewritten after every append and before any ID it covers is handed
out. A journal is *verified* when its witness is of this boot and the journal begins with
exactly the bytes the witness describes (it may be longer: a crash between the fsync and the
witness' write leaves the journal ahead, never behind, of what was handed out).

The witness does not survive a reboot, a new container, or a move of the data dir, and is not
copied with it: after any of those the journal is not verified, and its reserves are
abandoned rather than trusted (``docs/reserve.md`` has the argument and its cost).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from keygen.config import DEFAULT_RESERVE_WITNESS_DIR

__all__ = ["BOOT_ID_FILE", "Witness", "boot_id"]

BOOT_ID_FILE: Final = Path("/proc/sys/kernel/random/boot_id")
WITNESS_PREFIX: Final = "keygen-journal-"


@functools.cache
def boot_id() -> str:
    """This boot's identity (a new one at each boot of the kernel)."""
    try:
        return BOOT_ID_FILE.read_text().strip()
    except OSError:
        return "unknown"


@dataclass(slots=True)
class Witness:
    """The witness of one journal: its path, and the running hash of the bytes written."""

    journal: Path
    directory: Path
    length: int = 0
    _hash: hashlib._Hash | None = None

    @classmethod
    def of(cls, journal: Path, directory: Path | None) -> Witness:
        return cls(journal.resolve(), directory or DEFAULT_RESERVE_WITNESS_DIR)

    @property
    def path(self) -> Path:
        name = hashlib.sha256(str(self.journal).encode()).hexdigest()[:24]
        return self.directory / f"{WITNESS_PREFIX}{name}.json"

    def check(self, data: bytes) -> str | None:
        """Why ``data`` (the journal's bytes) is not what this boot last wrote; None when
        it is, or when it holds nothing to trust."""
        try:
            seen = json.loads(self.path.read_bytes())
            length, digest = int(seen["length"]), str(seen["sha256"])
            boot, journal = str(seen["boot"]), str(seen["journal"])
        except FileNotFoundError:
            return (
                "this boot never wrote it (the first start since a reboot, in a new container, "
                "or on a data dir copied, moved or restored)"
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"its witness {self.path} is unreadable ({exc})"
        if boot != boot_id() or journal != str(self.journal):
            return "its witness is of another boot or another journal"
        if len(data) < length:
            return (
                f"it is shorter ({len(data)} bytes) than this boot last wrote ({length} bytes): "
                "cut short, or restored from an earlier copy"
            )
        if hashlib.sha256(data[:length]).hexdigest() != digest:
            return "its bytes differ from what this boot last wrote: restored or copied"
        return None

    def reset(self, data: bytes) -> None:
        """The journal now holds exactly ``data``: witness it."""
        self._hash = hashlib.sha256(data)
        self.length = len(data)
        self._write()

    def extend(self, data: bytes) -> None:
        """``data`` was appended to the journal (and fsynced): witness it."""
        if self._hash is None:
            raise OSError(f"the witness of {self.journal} was never reset")
        self._hash.update(data)
        self.length += len(data)
        self._write()

    def _write(self) -> None:
        assert self._hash is not None
        body = json.dumps(
            {
                "journal": str(self.journal),
                "boot": boot_id(),
                "length": self.length,
                "sha256": self._hash.hexdigest(),
            }
        ).encode()
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            temporary.write_bytes(body)
            os.replace(temporary, self.path)  # never a torn witness
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
