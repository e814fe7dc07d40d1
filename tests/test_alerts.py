"""The alert rules: one definition, rendered as Prometheus rules and evaluated in-process."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

import pytest

from keygen.alerts import RULES, Alerts, prometheus_rules
from keygen.metrics import InstanceView
from keygen.metrics.counters import Counters, InstanceCounters
from keygen.snapshots import LayerSnapshot, WorkerState
from tests.support.tools import installed

RULE_FILE = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = RULE_FILE.with_name("alerts-test.yml")


def test_the_shipped_rule_file_is_the_rendered_rules() -> None:
    """deploy/prometheus/alerts.yml is what `keygen alerts rules` writes, to the byte."""
    assert RULE_FILE.read_text() == prometheus_rules(), (
        "deploy/prometheus/alerts.yml is stale: run "
        "`.venv/bin/keygen alerts rules --out deploy/prometheus/alerts.yml`"
    )


def test_promtool_accepts_the_rules_and_their_tests_pass() -> None:
    """promtool checks the rule file, and its unit tests fire each alert in Prometheus."""
    promtool = installed("promtool", "prometheus")
    for argv in (["check", "rules", str(RULE_FILE)], ["test", "rules", str(RULE_TESTS)]):
        result = subprocess.run([promtool, *argv], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_has_a_unit_test_and_a_runbook_entry() -> None:
    """Each rule is fired by alerts-test.yml and explained in docs/monitoring.md."""
    tests = RULE_TESTS.read_text()
    docs = (RULE_FILE.parents[2] / "docs" / "monitoring.md").read_text().lower()
    for rule in RULES:
        assert f"alertname: {rule.name}" in tests, rule.name
        assert f"### {rule.name.lower()}" in docs, f"no runbook section for {rule.name}"


def view(*, layer_up: bool = True, active_locks: int = 0) -> InstanceView:
    layers = [
        LayerSnapshot("postgresql", "healthy" if layer_up else "unhealthy", "closed", None, None)
    ]
    state = WorkerState(1, 0.0, layers, [], active_locks, None, None, {})
    return InstanceView(InstanceCounters(), state, [state], [state])


def traffic(statuses: dict[int, int]) -> InstanceView:
    """An instance that answered POST /allocate ``count`` times with each status, counted
    as the service counts them (every refusal also a failed allocation request)."""
    counters = Counters()
    for status, count in statuses.items():
        for _ in range(count):
            counters.record_response("/allocate", status)
            if status == 200:
                counters.record_success("sqlite", 1, 0.001)
            else:
                counters.record_failure(0.001)
    total = InstanceCounters()
    total.add(counters)
    counters.close()
    state = WorkerState(1, 0.0, [], [], 0, None, None, {})
    return InstanceView(total, state, [state], [state])


def error_rate(alerts: Alerts, statuses: dict[int, int], at: float) -> tuple[str, float | None]:
    """KeygenErrorRateHigh's state and value once the instance has answered ``statuses``."""
    document = alerts.evaluate(traffic(statuses), at)
    (entry,) = [a for a in document.alerts if a.name == "KeygenErrorRateHigh"]
    return entry.state, entry.value


def test_the_error_rate_counts_the_services_failures_not_the_clients_refusals() -> None:
    """Clients' 409 too_many_namespaces, 429 and 422 refusals leave KeygenErrorRateHigh at
    0, while 503s above 1 % of the requests served make it pending (its `for` is 1 minute)."""
    alerts = Alerts(instance_id="test")
    assert error_rate(alerts, {}, 10.0) == ("inactive", None)
    refused = {200: 100, 409: 50, 429: 30, 422: 20}
    assert error_rate(alerts, refused, 20.0) == ("inactive", 0.0)
    state, value = error_rate(alerts, {**refused, 503: 5}, 30.0)
    assert (state, value) == ("pending", 5 / 105)


def test_an_alert_goes_pending_then_firing_then_resolves(caplog: pytest.LogCaptureFixture) -> None:
    """KeygenLayerDown waits its `for` (scaled) before firing, logs each transition, and
    resolves when the layer answers again."""
    alerts = Alerts(instance_id="test", scale=0.1)  # for 30 s -> 3 s

    def state_at(at: float, up: bool) -> dict[str, Any]:
        document = alerts.evaluate(view(layer_up=up), at)
        (entry,) = [a for a in document.alerts if a.name == "KeygenLayerDown"]
        return {"state": entry.state, "since": entry.since, "labels": entry.labels}

    caplog.set_level(logging.INFO, logger="keygen.alerts")
    assert state_at(100.0, True)["state"] == "inactive"
    assert state_at(101.0, False) == {
        "state": "pending",
        "since": 101.0,
        "labels": {"source": "postgresql"},
    }
    assert state_at(103.0, False)["state"] == "pending"
    assert state_at(104.0, False)["state"] == "firing"
    assert state_at(105.0, True)["state"] == "inactive"
    transitions = [r.getMessage() for r in caplog.records if "KeygenLayerDown" in r.getMessage()]
    assert [t.split(": ", 1)[1].split(" (")[0] for t in transitions] == [
        "inactive -> pending",
        "pending -> firing",
        "firing -> inactive",
    ]


def test_an_alert_without_for_fires_at_once() -> None:
    """KeygenTooManyLocks has no `for`: more than 10 locks fire it on the first evaluation."""
    alerts = Alerts(instance_id="test")
    document = alerts.evaluate(view(active_locks=11), 10.0)
    (locks,) = [a for a in document.alerts if a.name == "KeygenTooManyLocks"]
    assert (locks.state, locks.value, locks.threshold) == ("firing", 11.0, 10)
    document = alerts.evaluate(view(active_locks=10), 11.0)
    (locks,) = [a for a in document.alerts if a.name == "KeygenTooManyLocks"]
    assert locks.state == "inactive"


def test_every_rule_is_listed_even_before_any_evaluation() -> None:
    """/alerts lists each rule once, inactive, before the first evaluation."""
    document = Alerts(instance_id="test").document()
    assert document.evaluated_at is None
    assert [a.name for a in document.alerts] == [rule.name for rule in RULES]
    assert {a.state for a in document.alerts} == {"inactive"}
