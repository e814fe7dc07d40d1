"""Per-worker counters in shared memory, added up exactly across processes."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from keygen.metrics.counters import Counters, read_instance
from keygen.metrics.layout import OTHER


def _worker(run_dir: str, allocations: int) -> None:
    counters = Counters(Path(run_dir))
    for _ in range(allocations):
        counters.record_success("sqlite", 10, 0.0002)
        counters.record_response("/allocate", 200)
    counters.record_failure(0.5)
    counters.record_response("/allocate", 503)
    counters.record_rejected("service_unavailable")
    counters.close()


def test_every_process_is_counted_exactly(tmp_path: Path) -> None:
    """Three processes' counts add up exactly in whichever process reads, dead ones included."""
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker, args=(str(tmp_path), n)) for n in (100, 250, 7)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    own = Counters(tmp_path)
    own.record_success("redis_sentinel", 1, 0.001)
    total = read_instance(tmp_path, own)
    assert total.by_source == {"sqlite": 357, "redis_sentinel": 1}
    assert total.failed == 3 and total.ids_allocated == 3571
    assert sum(total.bucket_counts) == 361
    assert total.responses() == {("/allocate", "200"): 357, ("/allocate", "503"): 3}
    assert total.rejected() == {"service_unavailable": 3}
    assert len(total.workers) == 4 and total.workers[own.pid] is True
    assert sorted(alive for pid, alive in total.workers.items() if pid != own.pid) == [False] * 3


def test_labels_outside_the_fixed_lists_count_as_other() -> None:
    """An unknown path, status, error code or source is counted, under "other"."""
    counters = Counters()
    counters.record_response("/no/such/path", 200)
    counters.record_response("/health", 418)
    counters.record_rejected("a_code_of_tomorrow")
    counters.record_success("a-layer-of-tomorrow", 1, 0.001)
    total = read_instance(None, counters)
    assert total.responses() == {(OTHER, "200"): 1, ("/health", OTHER): 1}
    assert total.rejected() == {OTHER: 1}
    assert total.by_source == {OTHER: 1}


def test_a_file_of_another_layout_is_not_read(tmp_path: Path) -> None:
    """A counters file that is not of this layout (an older Keygen's) is left out."""
    (tmp_path / "counters-1").write_bytes(b"not a counters file")
    own = Counters(tmp_path)
    own.record_success("sqlite", 5, 0.001)
    total = read_instance(tmp_path, own)
    assert total.by_source == {"sqlite": 1} and list(total.workers) == [own.pid]
