"""What the end-to-end tests share: a real Redis Sentinel topology per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keygen.cluster.topology import LocalCluster

#: A master is declared down after 1 s: failovers complete in about 2.3 s here.
DOWN_AFTER_MS = 1000


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A fresh Redis master, 2 replicas and 3 Sentinels on free ports."""
    topology = LocalCluster(tmp_path / "cluster", down_after_ms=DOWN_AFTER_MS, with_postgres=False)
    topology.up()
    try:
        yield topology
    finally:
        topology.kill_all()
