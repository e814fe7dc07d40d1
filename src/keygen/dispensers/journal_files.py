"""The journal's files: locking a slot, the data dir's identity, writes that reach the disk.

``journal.py`` keeps the records and what they mean; these are the system calls under it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from pathlib import Path
from typing import Final

from keygen.files import create_once

__all__ = ["DATA_ID_NAME", "data_dir_id", "lock", "owner_of"]

#: The data dir's identity: the owner every reserve journaled in it names.
DATA_ID_NAME: Final = "data.id"


def data_dir_id(data_dir: Path) -> str:
    """The data dir's identity (``data.id``), made when missing; processes making it at
    once agree on one."""
    path = data_dir / DATA_ID_NAME
    with contextlib.suppress(FileNotFoundError):
        return _read_id(path)
    create_once(path, secrets.token_hex(16).encode() + b"\n", 0o644)
    return _read_id(path)


def _read_id(path: Path) -> str:
    text = path.read_text().strip()
    if not text:
        raise OSError(f"{path} is empty: delete it (with the service stopped) to make another")
    return text


def lock(path: Path) -> int | None:
    """Open and lock ``path``; None when another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        mine = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
            return fd
        os.close(fd)  # replaced (rewritten) after we opened it: lock the file it is now


def owner_of(path: Path) -> str:
    """Who last opened a journal, from its last readable ``open`` record."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    for line in reversed(lines):
        _, _, body = line.partition(b" ")
        try:
            record = json.loads(body)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("type") == "open":
            return f"pid {record.get('pid')} ({record.get('owner')})"
    return "unknown process"
