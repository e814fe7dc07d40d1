"""``cluster.json``: the topology's settings and each node's process, for reattaching to it.

``keygen cluster up`` writes it, and again after every start of a node; ``status`` and
``down``, in other processes, read it back. Each process is recorded by its pid and its
start time: together they identify it through ``/proc`` even after the pid is recycled.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from keygen.cluster import processes as _proc
from keygen.cluster.layout import Ports
from keygen.cluster.node import Node
from keygen.errors import ClusterError

STATE_FILE = "cluster.json"
STATE_VERSION = 1

#: A recorded process: (pid, start time in clock ticks since boot), None when not running.
Recorded = tuple[int | None, int | None]


@dataclass(frozen=True)
class ClusterSettings:
    """What the state file records to build the same topology again (in this order)."""

    master_name: str
    quorum: int
    down_after_ms: int
    failover_timeout_ms: int
    appendfsync: str
    base_port: int | None
    ports: Ports
    secure: bool = False  # TLS and ACLs everywhere (keygen.cluster.security)


class StateFile:
    """``directory/cluster.json``."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / STATE_FILE
        self._lock = threading.Lock()

    def exists(self) -> bool:
        return self.path.exists()

    def write(self, settings: ClusterSettings, nodes: Iterable[Node]) -> None:
        """Write the file atomically: the settings, and each node's port and process."""
        processes = []
        for node in nodes:
            pid = node.pid if node.is_running() else None
            processes.append(
                {
                    "name": node.name,
                    "kind": node.kind,
                    "port": node.port,
                    "dir": node.directory.name,
                    "pid": pid,
                    "start_time": _proc.start_time(pid) if pid else None,
                }
            )
        state = {
            "version": STATE_VERSION,
            "updated_at": time.time(),
            **asdict(settings),
            "processes": processes,
        }
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(state, indent=2) + "\n")
            os.replace(tmp, self.path)

    def read(self) -> tuple[ClusterSettings, dict[str, Recorded]]:
        """The recorded settings, and each node's process by node name."""
        try:
            state = json.loads(self.path.read_text())
        except FileNotFoundError:
            raise ClusterError(
                f"no cluster recorded in {self.path.parent} (no {STATE_FILE})"
            ) from None
        except (OSError, ValueError) as exc:
            raise ClusterError(f"cannot read {self.path}: {exc}") from exc
        if state.get("version") != STATE_VERSION:
            raise ClusterError(f"{self.path}: unknown state version {state.get('version')!r}")
        recorded = state["ports"]
        settings = ClusterSettings(
            state["master_name"],
            state["quorum"],
            state["down_after_ms"],
            state["failover_timeout_ms"],
            state["appendfsync"],
            state.get("base_port"),
            Ports(
                redis=tuple(recorded["redis"]),
                sentinels=tuple(recorded["sentinels"]),
                postgres=recorded["postgres"],
            ),
            bool(state.get("secure", False)),  # absent from files written before it existed
        )
        return settings, {
            p["name"]: (p.get("pid"), p.get("start_time")) for p in state["processes"]
        }
