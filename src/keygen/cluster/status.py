"""What ``keygen cluster status`` reports: each process, its state and role, and the master
the Sentinels name."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from keygen.cluster.node import Node


@dataclass(frozen=True)
class ProcessStatus:
    """One process of the topology."""

    name: str
    kind: str  # redis | sentinel | postgres
    port: int
    pid: int | None
    state: str  # running | paused | stopped
    role: str | None  # master | replica | sentinel | ledger; None when it does not answer
    detail: str = ""

    @property
    def alive(self) -> bool:
        return self.state != "stopped"


@dataclass(frozen=True)
class ClusterStatus:
    """Every process, and the master the Sentinels name."""

    directory: str
    processes: list[ProcessStatus]
    master: tuple[str, int] | None  # per the majority of the answering Sentinels
    master_votes: int
    sentinels_answering: int
    env: dict[str, str] = field(default_factory=dict)

    def count(self, role: str) -> int:
        """Running processes in ``role``."""
        return sum(1 for p in self.processes if p.role == role and p.state == "running")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["master"] = f"{self.master[0]}:{self.master[1]}" if self.master else None
        return data


def status_of(node: Node) -> ProcessStatus:
    """A node's state; its role and view only if it runs (a paused node is not asked: it
    would not answer)."""
    running = node.is_running()
    paused = running and node.is_paused()
    state = "paused" if paused else "running" if running else "stopped"
    role, detail = node.describe() if running and not paused else (None, "")
    return ProcessStatus(
        node.name, node.kind, node.port, node.pid if running else None, state, role, detail
    )
