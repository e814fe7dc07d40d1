"""``deploy/grafana/keygen-dashboard.json``: the output of ``deploy/grafana/dashboard.py``, a
Grafana dashboard whose queries name only the metrics (and labels) that docs/monitoring.md
lists, and every one of them."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.deploy.files import DASHBOARD_JSON, GRAFANA

GENERATOR = GRAFANA / "dashboard.py"
MONITORING = Path(__file__).parents[2] / "docs" / "monitoring.md"
#: Labels Prometheus attaches to every scraped series.
TARGET_LABELS = {"instance", "job"}
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
PANEL_TYPES = {"row", "timeseries", "stat", "state-timeline"}
GRID_WIDTH = 24

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}")
_IDENTIFIER = re.compile(r"(?<![\w.$:])([a-zA-Z_:][\w:]*)(?![\w:]|\s*\()")
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


@dataclass(frozen=True)
class Metric:
    type: str
    labels: frozenset[str]


def documented_metrics() -> dict[str, Metric]:
    """The metrics table of docs/monitoring.md: name -> type and label names (a label's
    values, in parentheses, are not labels)."""
    section = MONITORING.read_text().split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    metrics: dict[str, Metric] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        name_cell, type_cell, label_cell = (cell.strip() for cell in line.split("|")[1:4])
        labels = re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", label_cell))
        for name in re.findall(r"`([a-zA-Z_:][\w:]*)`", name_cell):
            metrics[name] = Metric(type_cell, frozenset(labels))
    return metrics


def series_metric(series: str, metrics: dict[str, Metric]) -> str:
    """The documented metric a series belongs to (a histogram's ``_bucket`` is its own)."""
    for suffix in HISTOGRAM_SERIES:
        base = series.removesuffix(suffix)
        if base != series and metrics.get(base, Metric("", frozenset())).type == "histogram":
            return base
    return series


def matcher_labels(matchers: str) -> set[str]:
    return set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", _STRING.sub('""', matchers)))


def series_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects: identifiers that are neither
    functions, keywords, label names, label values nor range durations."""
    bare = _STRING.sub('""', expr)
    bare = re.sub(r"\{[^}]*\}", "", bare)
    bare = re.sub(r"\[[^\]]*\]", "", bare)
    bare = _GROUPING.sub("", bare)
    return {name for name in _IDENTIFIER.findall(bare) if name.lower() not in _KEYWORDS}


def grouping_labels(expr: str) -> set[str]:
    return {
        label.strip()
        for group in _GROUPING.findall(_STRING.sub('""', expr))
        for label in group.split(",")
        if label.strip()
    }


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD_JSON.read_text())
    return data


@pytest.fixture(scope="module")
def metrics() -> dict[str, Metric]:
    found = documented_metrics()
    assert "keygen_allocations_total" in found and "process_open_fds" in found
    return found


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    """deploy/grafana/dashboard.py, imported from its path (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("keygen_grafana_dashboard", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            yield panel


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in panels(dashboard):
        for target in panel["targets"]:
            yield panel["title"], target


def test_checked_in_json_is_the_generators_output(generator: ModuleType) -> None:
    """Regenerating the dashboard gives exactly the checked-in file."""
    assert generator.render() == DASHBOARD_JSON.read_text(), (
        "run .venv/bin/python deploy/grafana/dashboard.py"
    )


def test_check_mode_fails_on_a_stale_file(generator: ModuleType, tmp_path: Path) -> None:
    """``--check`` exits 1 on a file that differs or is missing and 0 once the generator has
    written it, and writes nothing itself."""
    output = tmp_path / DASHBOARD_JSON.name
    assert generator.main(["--check", "--output", str(output)]) == 1
    output.write_text("{}\n")
    assert generator.main(["--check", "--output", str(output)]) == 1
    assert output.read_text() == "{}\n"
    assert generator.main(["--output", str(output)]) == 0
    assert generator.main(["--check", "--output", str(output)]) == 0


def test_check_command_passes_on_the_repository() -> None:
    """``python deploy/grafana/dashboard.py --check``, as a developer runs it, exits 0."""
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_is_a_grafana_dashboard(dashboard: dict[str, Any]) -> None:
    """The JSON has a dashboard's fields; its panels have unique ids, known types and
    non-overlapping places on the 24-column grid, and each query a refId and an expression."""
    assert dashboard["uid"] == "keygen" and dashboard["title"] == "Keygen"
    assert isinstance(dashboard["schemaVersion"], int)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    occupied: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        assert panel["type"] in PANEL_TYPES, panel["title"]
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= GRID_WIDTH, panel["title"]
        cells = {
            (grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])
        }
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
    for title, target in queries(dashboard):
        assert target["refId"] and target["expr"], title


def test_template_variables(dashboard: dict[str, Any]) -> None:
    """``$datasource`` picks a Prometheus data source, ``$instance`` the Keygen instances
    (several, or all), and every panel queries ``$datasource``."""
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    instance = variables["instance"]
    assert instance["type"] == "query"
    assert instance["query"] == "label_values(keygen_build_info, instance)"
    assert instance["multi"] and instance["includeAll"]
    assert instance["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    for panel in panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_queries_name_only_documented_metrics(
    dashboard: dict[str, Any], metrics: dict[str, Metric]
) -> None:
    """Every series a query selects is a documented metric (or a documented histogram's
    series), selected by documented labels and filtered on ``$instance``."""
    for title, target in queries(dashboard):
        expr = target["expr"]
        names = series_names(expr)
        assert names, f"{title}: no metric in {expr}"
        for name in names:
            assert series_metric(name, metrics) in metrics, f"{title}: {name} is not documented"
        selectors = _SELECTOR.findall(expr)
        assert {name for name, _ in selectors} == names, f"{title}: a bare metric in {expr}"
        for name, matchers in selectors:
            metric = metrics[series_metric(name, metrics)]
            allowed = (
                metric.labels | TARGET_LABELS | ({"le"} if name.endswith("_bucket") else set())
            )
            assert matcher_labels(matchers) <= allowed, f"{title}: {name}{{{matchers}}}"
            assert 'instance=~"$instance"' in matchers, f"{title}: {name} ignores $instance"


def test_grouping_and_legends_use_the_metrics_labels(
    dashboard: dict[str, Any], metrics: dict[str, Metric]
) -> None:
    """``by (...)`` clauses and ``{{label}}`` legends name labels the query's metrics have,
    so no panel draws one unnamed series where the contract promises several."""
    for title, target in queries(dashboard):
        names = {series_metric(name, metrics) for name in series_names(target["expr"])}
        labels = [metrics[name].labels for name in names if name in metrics]
        available = TARGET_LABELS | {"le"} | set().union(*labels)
        assert grouping_labels(target["expr"]) <= available, title
        assert set(_LEGEND_LABEL.findall(target.get("legendFormat", ""))) <= available, title


def test_every_documented_metric_is_on_the_dashboard(
    dashboard: dict[str, Any], metrics: dict[str, Metric]
) -> None:
    """The dashboard shows every metric of the contract: a metric added to docs/monitoring.md
    needs a panel (the generator) before this passes."""
    shown = {
        series_metric(name, metrics)
        for _, target in queries(dashboard)
        for name in series_names(target["expr"])
    }
    assert set(metrics) - shown == set()


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'histogram_quantile(0.95, sum by (le) (rate(a_bucket{x="y"}[$__rate_interval])))',
            {"a_bucket"},
        ),
        ('(sum(rate(a{o="f"}[5m])) or vector(0)) / (sum(rate(a[5m])) > 0)', {"a"}),
        ('min by (namespace) (b{i=~"$instance"}) / 9223372036854775807', {"b"}),
        ("count(c == 0) or vector(1e3)", {"c"}),
        ("60 * sum by (source, to) (increase(d_total[5m] offset 1h))", {"d_total"}),
    ],
)
def test_series_names_reads_promql(expr: str, names: set[str]) -> None:
    """The test's PromQL reader finds the selected series and nothing else."""
    assert series_names(expr) == names
