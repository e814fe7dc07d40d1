"""The pure logic of ``keygen bench``: the schedule, the histogram and its merge, a step's
figures, the saturation rule and the climb, the tables, the failover timeline, the parser."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from keygen.bench.cli import _problem, _rates
from keygen.bench.failover import ScenarioResult, gaps, shifts
from keygen.bench.generator import Step
from keygen.bench.parallel import PER_PROCESS_RATE, processes_for
from keygen.bench.stats import (
    MIN_RATIO,
    LatencyHistogram,
    StepResult,
    bucket_of,
    bucket_value,
    climb,
    requests_in,
    saturated,
    scheduled_at,
)
from keygen.bench.tables import allocation_table, failover_table, ms, percent
from keygen.cli import build_parser


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def histogram_of(values: list[float]) -> LatencyHistogram:
    histogram = LatencyHistogram()
    for value in values:
        histogram.record(value)
    return histogram


def test_the_schedule_is_fixed_and_evenly_spaced() -> None:
    """Request i is due at t0 + i/rate, whatever happened before it."""
    assert scheduled_at(100.0, 0, 200) == 100.0
    assert scheduled_at(100.0, 200, 200) == pytest.approx(101.0)
    gaps_ = {
        round(scheduled_at(5.0, i + 1, 500) - scheduled_at(5.0, i, 500), 9) for i in range(999)
    }
    assert gaps_ == {0.002}
    assert requests_in(200, 2.0) == 400
    assert requests_in(0.1, 1.0) == 1


def test_processes_split_one_schedule_between_them() -> None:
    """Process k of P sends requests k, k+P, k+2P...: together exactly the one schedule."""
    total, parts = requests_in(1000, 1.0), 3
    sent = sorted(i for k in range(parts) for i in range(k, total, parts))
    assert sent == list(range(total))
    assert processes_for(100) == 1
    assert processes_for(PER_PROCESS_RATE * 50) >= 1


def test_buckets_are_exact_below_128_us_and_within_one_percent_above() -> None:
    """A value's bucket midpoint is within 1/128 of it; buckets are ordered like values."""
    for us in [*range(300), *random.Random(1).sample(range(300, 10**8), 2000)]:
        assert abs(bucket_value(bucket_of(us)) - us) <= max(0.5, us / 128), us
    indexes = [bucket_of(us) for us in range(0, 100_000, 7)]
    assert indexes == sorted(indexes)


def test_percentiles_match_the_exact_ones_within_the_bucket_error() -> None:
    """p50/p95/p99/max of the histogram agree with the sorted values to about 1 %."""
    rng = random.Random(7)
    values = [rng.lognormvariate(-7, 1.2) for _ in range(20_000)]  # ~1 ms, long tail
    histogram = histogram_of(values)
    for q in (0.5, 0.95, 0.99):
        assert histogram.percentile(q) == pytest.approx(exact_quantile(values, q), rel=0.01)
    assert histogram.percentile(1.0) == pytest.approx(max(values), rel=1e-9)
    assert histogram.mean == pytest.approx(sum(values) / len(values), rel=1e-9)
    assert LatencyHistogram().percentile(0.99) == 0.0


def test_merged_histograms_equal_one_histogram_of_everything() -> None:
    """Merging the processes' histograms loses nothing: the same counts, sum and max."""
    rng = random.Random(3)
    parts = [[rng.expovariate(500) for _ in range(3000)] for _ in range(3)]
    merged = LatencyHistogram()
    for part in parts:
        merged.merge(histogram_of(part))
    whole = histogram_of([v for part in parts for v in part])
    assert merged.counts == whole.counts
    assert merged.count == whole.count == 9000
    assert merged.max_us == whole.max_us
    assert merged.total_us == pytest.approx(whole.total_us)
    assert merged.percentile(0.99) == whole.percentile(0.99)


def result(offered: float, *, scheduled: int, ok: int, elapsed: float) -> StepResult:
    step = StepResult("t", offered, 1.0, scheduled=scheduled, ok=ok, responses=scheduled)
    step.elapsed = elapsed
    for _ in range(ok):
        step.latency.record(0.002)
    return step


def test_step_results_merge_and_compute_rate_and_success() -> None:
    """Merged parts add up; RPS is answers over the time to the last one."""
    a = result(1000, scheduled=500, ok=500, elapsed=0.999)
    b = result(1000, scheduled=500, ok=499, elapsed=1.0)
    b.errors["timeout"] = 1
    b.sources["sqlite"] = 499
    total = StepResult.merged([a, b])
    assert (total.scheduled, total.ok, total.failed, total.processes) == (1000, 999, 1, 2)
    assert total.rps == pytest.approx(1000)
    assert total.success_rate == pytest.approx(0.999)
    figures = total.as_dict()
    assert figures["errors"] == {"timeout": 1} and figures["sources"] == {"sqlite": 499}
    assert figures["latency_ms"]["p50"] == pytest.approx(2.0, rel=0.01)


def test_saturation_is_a_rate_below_95_percent_or_a_success_rate_below_99() -> None:
    """The climb stops at a step that fell behind or failed requests."""
    assert not saturated(result(1000, scheduled=1000, ok=1000, elapsed=1.0))
    behind = result(1000, scheduled=1000, ok=1000, elapsed=1.0 / (MIN_RATIO - 0.01))
    assert saturated(behind)
    assert saturated(result(1000, scheduled=1000, ok=980, elapsed=1.0))
    assert not saturated(result(1000, scheduled=1000, ok=995, elapsed=1.0))


def test_the_climb_starts_above_the_listed_rates_and_is_bounded() -> None:
    """After 2,000: 5,000, 10,000, ...; after 7,000: 10,000 first; never past 100,000."""
    assert list(climb(2000))[:3] == [5000, 10000, 15000]
    assert next(climb(7000)) == 10000
    assert max(climb(2000)) == 100_000
    assert list(climb(200_000)) == []


def test_formatting_never_rounds_a_failure_away() -> None:
    """1 failure in 20,000 reads 99.99 %, not 100 %; latencies keep 3 digits."""
    assert percent(20_000, 20_000) == "100%"
    assert percent(19_999, 20_000) == "99.99%"
    assert percent(0, 0) == "-"
    assert (ms(0.00042), ms(0.0421), ms(0.4213)) == ("0.42 ms", "42.1 ms", "421 ms")


def test_the_allocation_table_groups_targets_by_rate_beside_the_original() -> None:
    """Each offered rate: a row per target in order, then the original's row."""
    steps = [
        StepResult("keygen", 100, 1, scheduled=100, ok=100, responses=100, elapsed=1.0),
        StepResult("bare", 100, 1, scheduled=100, ok=100, responses=100, elapsed=1.0),
        StepResult("keygen", 5000, 1, scheduled=5000, ok=4000, responses=4000, elapsed=1.0),
    ]
    lines = allocation_table(steps, ["keygen", "bare"]).splitlines()
    assert lines[0].split("|")[1:-1] == [
        f" {h} " for h in ("Load", "Target", "RPS", "Avg", "p50", "p95", "p99", "Success", "Note")
    ]
    assert lines[2].startswith("| 100 req/s | keygen | 100 |")
    assert lines[3].startswith("|  | bare | 100 |")
    assert lines[4] == "|  | original description | 100 | 2.1 ms | - | 4.2 ms | - | 100% |  |"
    assert lines[5].startswith("| 5,000 req/s | keygen | 4,000 |")
    assert lines[5].endswith("| 80.00% | saturated |")
    assert len(lines) == 6  # no original row at 5,000: it has none


def test_the_failover_table_shows_times_impact_and_the_original() -> None:
    """A row names detection, failover and impact, then the original's three figures."""
    row = ScenarioResult(
        "Master failure", "master", sdown=5.1, health_down=0.2, promoted=6.3, left=0.3, back=7.0
    )
    row.longest_gap, row.failed, row.requests = 0.25, 2, 8000
    row.sources = Counter({"redis_sentinel": 5000, "postgresql": 2998})
    broken = ScenarioResult("Sentinel failure", "sentinel", error="boom")
    text = failover_table([row, broken])
    assert (
        "| Master failure | Sentinel +sdown 5.1 s; /health 0.2 s | promoted 6.3 s; on "
        "redis_sentinel again 7.0 s | longest gap 0.25 s; 2 of 8,000 failed; redis_sentinel "
        "5,000, postgresql 2,998 | 5s | 10s | < 1s interruption |" in text
    )
    assert (
        "| Sentinel failure | not measured: boom |  |  | N/A | N/A | No impact (quorum) |" in text
    )


def test_the_longest_gap_spans_the_last_success_before_the_fault() -> None:
    """Failures and silence both count as a gap; the end of the run closes the last one."""
    times = [0.0, 1.0, 2.0, 2.5, 3.0, 5.0, 5.1]
    sources: list[str | None] = ["r", "r", None, None, "p", "p", None]
    assert gaps(times, sources, since=1.5) == pytest.approx(2.0)  # 1.0 -> 3.0
    assert gaps([1.0, 2.0], [None, None], since=0.5) == pytest.approx(1.5)


def test_left_and_back_wait_for_the_promotion() -> None:
    """'Back on redis_sentinel' is the first redis answer after leaving, and after promotion."""
    redis = "redis_sentinel"
    times = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    sources: list[str | None] = [redis, redis, "postgresql", redis, "postgresql", redis]
    assert shifts(times, sources, since=0.5, promoted=None) == (2.0, 3.0)
    assert shifts(times, sources, since=0.5, promoted=3.5) == (2.0, 5.0)
    assert shifts(times, [redis] * 6, since=0.5, promoted=None) == (None, None)


def test_the_request_is_one_keep_alive_post_with_the_key() -> None:
    """The bytes on the wire: the path under the URL's, Host, length, Bearer token."""
    wire = Step("http://127.0.0.1:9/base/", 1, 1, size=5, namespace="n", api_key="k").request()
    head, body = wire.split(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /base/allocate HTTP/1.1"
    assert "Host: 127.0.0.1:9" in lines and "Authorization: Bearer k" in lines
    assert f"Content-Length: {len(body)}" in lines
    assert body == b'{"size":5,"namespace":"n"}'


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rates", "100,abc"], "is not a rate"),
        (["--rates", "0"], "above 0"),
        (["--duration", "-1"], "must be above 0"),
        (["--connections", "0"], "at least 1"),
        (["--url", "http://x:1", "--topology", "embedded"], "not allowed with"),
        (["--url", "ftp://x:1"], "is not an instance's URL"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The parser refuses bad values and says why."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["bench", *argv])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_combinations_the_parser_cannot_see_are_refused() -> None:
    """https, and the failover table without the Redis topology, are named problems."""
    parse = build_parser().parse_args
    assert "https is not supported" in (_problem(parse(["bench", "--url", "https://h:1"])) or "")
    assert "needs --topology redis" in (_problem(parse(["bench", "--failover"])) or "")
    assert _problem(parse(["bench", "--topology", "redis", "--failover"])) is None
    # host:port is http://host:port, as for keygen allocate and keygen monitor.
    assert parse(["bench", "--url", "127.0.0.1:8010"]).url == "http://127.0.0.1:8010"
    assert _problem(parse(["bench", "--url", "127.0.0.1:8010"])) is None
    assert _rates("100, 1_000") == [100.0, 1000.0]
