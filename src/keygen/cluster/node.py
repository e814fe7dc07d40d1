"""What every node of the local topology offers: Redis data nodes, Sentinels, PostgreSQL.

The topology, its state file and ``keygen cluster status`` know nodes only through
:class:`Node`; what is particular to one kind (replication, Sentinel's view, SQL) stays on
its class.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol


class Node(Protocol):
    """One server process of the topology, in a directory of its own on 127.0.0.1."""

    name: str
    kind: str  # redis | sentinel | postgres
    port: int
    directory: Path
    #: Called after each successful start (the cluster records the new pid).
    on_start: Callable[[], None] | None

    @property
    def pid(self) -> int | None:
        """The pid of the node's (main) process, as recorded."""

    def attach(self, pid: int | None, start_time: int | None) -> None:
        """Adopt the process a state file recorded for this node (``None``: forget it)."""

    def start(self, timeout: float = ...) -> None:
        """Start the server and wait until it answers; raise if it is already running."""

    def stop(self, timeout: float = ...) -> None:
        """Stop the server cleanly and wait until it is gone; nothing if it is not running."""

    def kill(self, *, timeout: float = ...) -> None:
        """SIGKILL the server, as a crash would, and wait until it is gone."""

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing answers."""

    def resume(self) -> None:
        """SIGCONT."""

    def is_running(self) -> bool:
        """Whether the recorded process runs and is ours (paused counts as running)."""

    def is_paused(self) -> bool:
        """Whether the recorded process is stopped by SIGSTOP."""

    def describe(self) -> tuple[str | None, str]:
        """Ask the running node its role (None when it does not answer) and what it sees."""

    def log_tail(self, chars: int = ...) -> str:
        """The end of the server's log."""
