"""Durable small files: written whole, fsynced, and made once by whichever process is first."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["create_once", "fsync_dir", "write_all"]


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_once(path: Path, content: bytes, mode: int) -> None:
    """Make ``path`` hold ``content`` unless it exists: written whole and fsynced under a name
    of this process's, then linked into place, so that a reader never sees it half written
    and, of several processes making it at once, the first one's counts (the others' content
    is dropped: read the file afterwards)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        write_all(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temporary, path)  # fails if another process made it first: theirs counts
    except FileExistsError:
        pass
    finally:
        temporary.unlink()
    fsync_dir(path.parent)
