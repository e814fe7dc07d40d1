"""The rate limits' arithmetic (``keygen/quotas.py``, ``keygen/rates.py``): sliding seconds,
UTC days, what a refusal says, and the usage per key. Sharing through a real Redis and the
429s of a real server are in tests/e2e/test_rate_limits.py."""

from __future__ import annotations

import time

import pytest

from keygen import quotas as quotas_module
from keygen.errors import RateLimited
from keygen.quotas import Counter, Quotas, UsageMeter
from keygen.rates import NamespaceRule, Rates, parse_namespace_limits
from tests.support.fakes import FakeLedger


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock(1_000_000.0)
    monkeypatch.setattr(time, "time", clock)  # quotas.py reads time.time()
    return clock


def test_requests_per_second_refuses_the_one_past_the_limit(clock: Clock) -> None:
    quotas = Quotas()
    rates = Rates(requests_per_second=3)
    for _ in range(3):
        quotas.admit("k1", rates, "default", 10)
    with pytest.raises(RateLimited) as refused:
        quotas.admit("k1", rates, "default", 10)
    headers = refused.value.headers()
    assert refused.value.status_code == 429
    assert headers["Retry-After"] == "1"
    assert headers["RateLimit-Limit"] == "3"
    assert headers["RateLimit-Remaining"] == "0"
    assert headers["RateLimit-Policy"] == '"requests_per_second";q=3;w=1'
    assert "API key k1" in refused.value.message
    assert quotas.refused == 1
    quotas.admit("k2", rates, "default", 10)  # another key counts on its own


def test_the_second_slides_so_a_burst_at_its_boundary_is_not_let_through_twice(
    clock: Clock,
) -> None:
    quotas = Quotas()
    rates = Rates(requests_per_second=10)
    clock.now = 1_000_000.9
    for _ in range(10):
        quotas.admit("k", rates, "default", 1)
    clock.now = 1_000_001.1  # the next second; 0.8 of the previous one is still in the last second
    with pytest.raises(RateLimited):
        quotas.admit("k", rates, "default", 1)
    clock.now = 1_000_001.5  # half of it: 5 of the 10 still count
    for _ in range(5):
        quotas.admit("k", rates, "default", 1)
    with pytest.raises(RateLimited):
        quotas.admit("k", rates, "default", 1)


def test_a_clock_set_back_starts_the_window_again(clock: Clock) -> None:
    """A system clock stepped back (an hour here) does not weigh the previous second's count
    thousands of times over: the window moves back with it, as a new one."""
    quotas = Quotas()
    rates = Rates(requests_per_second=3)
    for _ in range(3):
        quotas.admit("k", rates, "default", 1)
    clock.now += 1.5  # the next second: last second's 3 weigh half
    quotas.admit("k", rates, "default", 1)
    clock.now -= 3600
    for _ in range(3):
        quotas.admit("k", rates, "default", 1)
    with pytest.raises(RateLimited):
        quotas.admit("k", rates, "default", 1)


def test_ids_per_second_counts_ids_and_names_a_request_that_can_never_fit(clock: Clock) -> None:
    quotas = Quotas()
    rates = Rates(ids_per_second=1000)
    quotas.admit("k", rates, "default", 600)
    with pytest.raises(RateLimited) as refused:
        quotas.admit("k", rates, "default", 600)
    assert refused.value.headers()["RateLimit-Remaining"] == "400"
    quotas.admit("k", rates, "default", 400)
    with pytest.raises(RateLimited) as never:
        quotas.admit("k", rates, "default", 1001)
    assert "ask for at most 1000" in never.value.message


def test_ids_per_day_resets_at_midnight_utc(clock: Clock) -> None:
    quotas = Quotas()
    rates = Rates(ids_per_day=100)
    clock.now = 86_400 * 20_000 - 30.0  # 30 s before a UTC midnight
    quotas.admit("k", rates, "default", 100)
    with pytest.raises(RateLimited) as refused:
        quotas.admit("k", rates, "default", 1)
    assert refused.value.headers()["Retry-After"] == "30"
    clock.now += 31
    quotas.admit("k", rates, "default", 100)


def test_a_refused_request_counts_against_nothing(clock: Clock) -> None:
    """Checked against every limit first, counted only when all of them let it through."""
    quotas = Quotas(parse_namespace_limits("orders:ids_per_second=100"))
    rates = Rates(requests_per_second=5)
    with pytest.raises(RateLimited):
        quotas.admit("k", rates, "orders", 101)  # the namespace refuses it
    for _ in range(5):  # so the key's 5 requests are all still there
        quotas.admit("k", rates, "orders", 1)


def test_namespace_limits_count_each_namespace_on_its_own_first_glob_first(clock: Clock) -> None:
    rules = parse_namespace_limits("shop-eu:requests_per_second=1;shop-*:requests_per_second=2")
    quotas = Quotas(rules)
    assert quotas.namespaced
    quotas.admit("", None, "shop-eu", 1)
    with pytest.raises(RateLimited) as refused:
        quotas.admit("", None, "shop-eu", 1)
    assert "namespace 'shop-eu'" in refused.value.message
    for namespace in ("shop-us", "shop-asia"):
        quotas.admit("", None, namespace, 1)
        quotas.admit("", None, namespace, 1)
        with pytest.raises(RateLimited):
            quotas.admit("", None, namespace, 1)
    for _ in range(50):
        quotas.admit("", None, "orders", 1)  # no rule: no limit


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("orders", "is not '<namespace glob>"),
        ("Orders:requests_per_second=1", "is not '<namespace glob>"),
        ("orders:requests=1", "is not <limit>=N"),
        ("orders:requests_per_second=-1", "is not <limit>=N"),
        ("orders:requests_per_second=0", "between 1 and"),
        ("orders:", "names no limit"),
    ],
)
def test_namespace_limits_refuse_what_they_cannot_mean(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_namespace_limits(text)


def test_namespace_limits_parse() -> None:
    assert parse_namespace_limits(
        " orders:ids_per_day=5, requests_per_second=2 ; x*:ids_per_second=9;"
    ) == (
        NamespaceRule("orders", Rates(requests_per_second=2, ids_per_day=5)),
        NamespaceRule("x*", Rates(ids_per_second=9)),
    )


def test_a_counter_keeps_what_it_could_not_send_for_the_window_it_belongs_to(clock: Clock) -> None:
    counter = Counter("key:k", "requests_per_second", 100)
    counter.used(clock.now)
    counter.own = 7
    clock.now += 1.0
    assert counter.used(clock.now) == pytest.approx(7.0)  # the previous second, just ended
    assert counter.stale == [(int((clock.now - 1) // 1), 7)]


@pytest.mark.anyio
async def test_usage_per_key_is_added_to_the_ledger_and_kept_while_it_is_down() -> None:
    ledger = FakeLedger()
    usage = UsageMeter(ledger)
    usage.record("k1", 10)
    usage.record("k1", 5)
    usage.record("k2", 1)
    ledger.down = True
    with pytest.raises(Exception, match="down"):
        await usage.flush()
    ledger.down = False
    usage.record("k1", 1)
    await usage.flush()
    totals = {(u.key_id): (u.requests, u.ids) for u in await ledger.key_usage("0000-00-00")}
    assert totals == {"k1": (3, 16), "k2": (1, 1)}
    await usage.flush()  # nothing new: nothing added twice
    totals = {(u.key_id): (u.requests, u.ids) for u in await ledger.key_usage("0000-00-00")}
    assert totals == {"k1": (3, 16), "k2": (1, 1)}


def test_namespaces_named_without_end_are_forgotten_least_recent_first(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client naming ever new namespaces grows the table of counters only up to a bound:
    past it the namespaces counted least recently (and those without limits) are dropped,
    the busy ones kept with their counts."""
    monkeypatch.setattr(quotas_module, "MAX_TRACKED_NAMESPACES", 100)
    quotas = Quotas(parse_namespace_limits("busy:requests_per_second=5;n*:requests_per_second=9"))
    for index in range(1000):
        quotas.admit("", None, f"x{index}", 1)  # no rule
    assert len(quotas._namespaces) <= 100
    for index in range(60):
        quotas.admit("", None, f"n{index}", 1)
    clock.now += 10.0
    quotas.admit("", None, "busy", 1)
    for index in range(300):
        quotas.admit("", None, f"m{index}", 1)
    assert len(quotas._namespaces) <= 100 and "busy" in quotas._namespaces
    for _ in range(4):
        quotas.admit("", None, "busy", 1)
    with pytest.raises(RateLimited):
        quotas.admit("", None, "busy", 1)  # its count survived
