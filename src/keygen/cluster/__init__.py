"""The local topology launcher: Redis master + 2 replicas, 3 Sentinels and PostgreSQL.

``keygen cluster up|status|down`` is its command line; tests import it to start their own
copies on free ports and to inject faults (kill, pause, restart) into single nodes.
"""

from keygen.cluster.postgres import PostgresNode
from keygen.cluster.redis import RedisNode, SentinelNode
from keygen.cluster.status import ClusterStatus, ProcessStatus
from keygen.cluster.topology import DEFAULT_BASE_PORT, STATE_FILE, LocalCluster, Ports
from keygen.errors import ClusterError

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
