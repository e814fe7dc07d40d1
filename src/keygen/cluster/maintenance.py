"""Planned maintenance of a running topology, for the upgrade procedure (docs/upgrade.md):
a planned failover, and a rolling restart of every Redis process, one at a time.

Each step waits for the condition that makes the next one safe: the replicas in sync before
the master is failed over or a node is taken down, the Sentinels agreeing (with their
quorum) before the next Sentinel restarts. The service never sees more than one Redis
process away, and at most one failover, which its fencing turns into a fresh lease.
"""

from __future__ import annotations

import redis

from keygen.cluster import processes as _proc
from keygen.cluster.readiness import FAULT_POLL_INTERVAL, Readiness
from keygen.cluster.redis import RedisNode, SentinelNode
from keygen.errors import ClusterError
from keygen.progress import Progress, quiet

__all__ = ["planned_failover", "rolling_restart"]


def planned_failover(
    cluster: Readiness, timeout: float = 60.0, progress: Progress = quiet
) -> RedisNode:
    """Move the master role to an in-sync replica with ``SENTINEL FAILOVER``, then wait
    until the old master replicates the new one and every Sentinel agrees; return the new
    master."""
    old = cluster.master()
    cluster.wait_in_sync(timeout)
    asked = next((s for s in cluster.sentinels if s.is_running() and not s.is_paused()), None)
    if asked is None:
        raise ClusterError("no Sentinel is running to fail over")
    _proc.wait_until(
        lambda: _replicas_promotable(asked, len(cluster.redis_nodes) - 1),
        timeout,
        f"{asked.name} to see every replica as promotable",
        lambda: _replica_views(asked),
        interval=FAULT_POLL_INTERVAL,
    )
    progress(f"failing over from {old.name} ({asked.name} asked)")
    asked.failover()
    new = cluster.wait_for_failover(old, timeout)
    cluster.wait_in_sync(timeout)
    cluster.wait_sentinels_ready(timeout)
    progress(f"{new.name} is master; {old.name} replicates it")
    return new


def _replica_states(sentinel: SentinelNode) -> list[dict[str, str]]:
    with sentinel.client() as client:
        replies = client.execute_command("SENTINEL", "REPLICAS", sentinel.master_name)
    # RESP2 gives each replica as a flat [key, value, ...] list.
    return [
        dict(zip(reply[::2], reply[1::2], strict=True)) if isinstance(reply, list) else reply
        for reply in replies
    ]


def _replicas_promotable(sentinel: SentinelNode, expected: int) -> bool:
    """The Sentinel sees ``expected`` replicas, each up with its link to the master up: a
    restarted replica is refused (NOGOODSLAVE) until the Sentinel's next INFO of it."""
    try:
        states = _replica_states(sentinel)
    except redis.RedisError:
        return False
    return len(states) == expected and all(
        str(s.get("flags")) == "slave" and str(s.get("master-link-status")) == "ok" for s in states
    )


def _replica_views(sentinel: SentinelNode) -> str:
    try:
        return repr(_replica_states(sentinel))
    except redis.RedisError as exc:
        return f"{sentinel.name}: {exc}"


def rolling_restart(
    cluster: Readiness, timeout: float = 60.0, progress: Progress = quiet
) -> RedisNode:
    """Restart every Sentinel, then every replica, each once the one before is back; then
    fail over to a restarted replica and restart the old master last. Returns the master
    at the end (not the one at the start)."""
    cluster.wait_in_sync(timeout)
    cluster.wait_sentinels_ready(timeout)
    for sentinel in cluster.sentinels:
        progress(f"restarting {sentinel.name}")
        sentinel.restart(timeout)
        cluster.wait_sentinels_ready(timeout)
    old = cluster.master()
    for node in cluster.redis_nodes:
        if node is not old:
            progress(f"restarting replica {node.name}")
            node.restart(timeout)
            cluster.wait_in_sync(timeout)
    new = planned_failover(cluster, timeout, progress)
    progress(f"restarting the old master {old.name}, now a replica")
    old.restart(timeout)
    cluster.wait_in_sync(timeout)
    cluster.wait_sentinels_ready(timeout)
    return new
