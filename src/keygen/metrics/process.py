"""CPU, memory and open files of the instance's worker processes, read from ``/proc``."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ProcessFigures", "process_figures"]

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ProcessFigures:
    cpu_seconds: float
    resident_bytes: int
    open_fds: int


def process_figures(pids: Iterable[int]) -> ProcessFigures:
    """The figures of ``pids`` added up; a process that is gone counts nothing."""
    cpu = 0.0
    resident = fds = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                # After the command (in parentheses, which may hold spaces): field 3 onwards.
                fields = stat.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{pid}/statm", "rb") as statm:
                pages = int(statm.read().split()[1])
            count = len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, IndexError, ValueError):
            continue
        cpu += (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
        resident += pages * _PAGE
        fds += count
    return ProcessFigures(cpu, resident, fds)
