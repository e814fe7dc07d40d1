"""The local topology launcher: Redis master + 2 replicas, 3 Sentinels and PostgreSQL.

``keygen cluster up|status|down`` is its command line; tests import it to start their own
copies on free ports and to inject faults (kill, pause, restart) into single nodes.

The names below are imported on first use (PEP 562), so that importing a light submodule
(``keygen.cluster.cli``, ``keygen.cluster.processes``) does not load redis-py.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from keygen.errors import ClusterError

if TYPE_CHECKING:
    from keygen.cluster.layout import DEFAULT_BASE_PORT, Ports
    from keygen.cluster.postgres import PostgresNode
    from keygen.cluster.redis import RedisNode, SentinelNode
    from keygen.cluster.state import STATE_FILE
    from keygen.cluster.status import ClusterStatus, ProcessStatus
    from keygen.cluster.topology import LocalCluster

__all__ = [
    "DEFAULT_BASE_PORT",
    "STATE_FILE",
    "ClusterError",
    "ClusterStatus",
    "LocalCluster",
    "Ports",
    "PostgresNode",
    "ProcessStatus",
    "RedisNode",
    "SentinelNode",
]

_HOMES = {
    "DEFAULT_BASE_PORT": "layout",
    "Ports": "layout",
    "PostgresNode": "postgres",
    "RedisNode": "redis",
    "SentinelNode": "redis",
    "STATE_FILE": "state",
    "ClusterStatus": "status",
    "ProcessStatus": "status",
    "LocalCluster": "topology",
}


def __getattr__(name: str) -> object:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value  # the next look-up is a plain one
    return value
