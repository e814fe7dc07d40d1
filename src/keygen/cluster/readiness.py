"""Who is master now, and waiting until the Redis side of the topology is ready again.

:class:`Readiness` holds the questions (which master the Sentinels name, which nodes are
in-sync replicas) and the waits built on them: after ``up``, after a failover, after a node
comes back. :class:`~keygen.cluster.topology.LocalCluster` is one.
"""

from __future__ import annotations

from collections import Counter

import redis

from keygen.cluster import processes as _proc
from keygen.cluster.redis import RedisNode, SentinelNode
from keygen.errors import ClusterError

#: Seconds between looks while waiting out a failover or a resync. Each look opens a
#: connection to every Sentinel or node: polled 20 times a second it took a tenth of the CPU
#: of a chaos run's load generator, in the same process.
FAULT_POLL_INTERVAL = 0.2


class Readiness:
    """The data nodes and the Sentinels watching them, asked and waited on."""

    redis_nodes: list[RedisNode]
    sentinels: list[SentinelNode]

    # -- who is master --------------------------------------------------------------------

    def sentinel_master(self) -> tuple[tuple[str, int] | None, int, int]:
        """The master named by most answering Sentinels: (address, votes, answering)."""
        answers = [
            s.master_address() for s in self.sentinels if s.is_running() and not s.is_paused()
        ]
        named = Counter(a for a in answers if a is not None)
        if not named:
            return None, 0, 0
        address, votes = named.most_common(1)[0]
        return address, votes, sum(named.values())

    def master(self) -> RedisNode:
        """The data node that is master now, per the Sentinels."""
        address, _, _ = self.sentinel_master()
        if address is None:
            raise ClusterError("no Sentinel answers")
        return self.node_at(address[1])

    def node_at(self, port: int) -> RedisNode:
        for node in self.redis_nodes:
            if node.port == port:
                return node
        raise ClusterError(f"no data node of this cluster listens on port {port}")

    def replicas(self) -> list[RedisNode]:
        """The data nodes that report themselves as replicas now."""
        return [n for n in self.redis_nodes if n.role() == "replica"]

    # -- waits ----------------------------------------------------------------------------

    def wait_for_failover(self, old_master: RedisNode, timeout: float = 30.0) -> RedisNode:
        """Wait until every running Sentinel names the same master, not ``old_master``, and
        that node reports role master; return it."""
        found: list[RedisNode] = []

        def promoted() -> bool:
            answers = {
                s.master_address() for s in self.sentinels if s.is_running() and not s.is_paused()
            }
            if len(answers) != 1 or None in answers:
                return False
            (address,) = answers
            if address is None or address[1] == old_master.port:
                return False
            node = self.node_at(address[1])
            if node.role() != "master":
                return False
            found[:] = [node]
            return True

        _proc.wait_until(
            promoted,
            timeout,
            f"a failover away from {old_master.name}",
            self._sentinel_detail,
            interval=FAULT_POLL_INTERVAL,
        )
        return found[0]

    def wait_in_sync(self, timeout: float = 30.0) -> None:
        """Wait until every running data node other than the master is an in-sync replica
        of it."""

        def synced() -> bool:
            try:
                master = self.master()
            except ClusterError:
                return False
            return all(
                n.in_sync(of=master.port)
                for n in self.redis_nodes
                if n is not master and n.is_running()
            )

        _proc.wait_until(
            synced,
            timeout,
            "the replicas to be in sync",
            self._replication_detail,
            interval=FAULT_POLL_INTERVAL,
        )

    def wait_sentinels_ready(self, timeout: float = 30.0) -> None:
        """Wait until every Sentinel names the same master, sees all its replicas and the
        other Sentinels, and has its quorum (a restarted one learns of failovers it missed)."""
        _proc.wait_until(
            self._sentinels_ready,
            timeout,
            "the Sentinels to agree",
            self._sentinel_detail,
            interval=FAULT_POLL_INTERVAL,
        )

    # -- conditions -----------------------------------------------------------------------

    def _replication_ready(self) -> bool:
        try:
            infos = [node.info_replication() for node in self.redis_nodes]
        except redis.RedisError:
            return False
        masters = [
            n
            for n, info in zip(self.redis_nodes, infos, strict=True)
            if info.get("role") == "master"
        ]
        if len(masters) != 1:
            return False
        return all(
            info.get("master_port") == masters[0].port
            and info.get("master_link_status") == "up"
            and not info.get("master_sync_in_progress")
            for node, info in zip(self.redis_nodes, infos, strict=True)
            if node is not masters[0]
        )

    def _replication_detail(self) -> str:
        return "\n".join(
            f"{n.name}: role={n.role()} in_sync={n.in_sync()}\n{n.log_tail(800)}"
            for n in self.redis_nodes
        )

    def _sentinels_ready(self) -> bool:
        replicas, others = len(self.redis_nodes) - 1, len(self.sentinels) - 1
        master_port: int | None = None
        for sentinel in self.sentinels:
            try:
                state = sentinel.master_state()
            except redis.RedisError:
                return False
            port = int(state.get("port", 0))
            if master_port is None:
                master_port = port
            if (
                port != master_port
                or state.get("flags") != "master"
                or int(state.get("num-slaves", 0)) != replicas
                or int(state.get("num-other-sentinels", 0)) != others
                or not sentinel.ckquorum()
            ):
                return False
        return True

    def _sentinel_detail(self) -> str:
        lines = []
        for sentinel in self.sentinels:
            try:
                lines.append(f"{sentinel.name}: {sentinel.master_state()}")
            except redis.RedisError as exc:
                lines.append(f"{sentinel.name}: {exc}\n{sentinel.log_tail(800)}")
        return "\n".join(lines)
