"""``deploy/prometheus/prometheus.yml``: valid for ``promtool``, scraping every 15 s, naming the
generated alerting rules."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.files import PROMETHEUS_CONFIG
from tests.support.tools import installed

RULES = PROMETHEUS_CONFIG.with_name("alerts.yml")


@pytest.fixture(scope="module")
def promtool() -> str:
    return installed("promtool", "prometheus")


def test_scrape_interval_and_rule_files(prometheus_config: dict[str, Any]) -> None:
    """Prometheus scrapes and evaluates every 15 s (the figure Grafana's $__rate_interval is
    built on) and loads alerts.yml from beside the config."""
    assert prometheus_config["global"]["scrape_interval"] == "15s"
    assert prometheus_config["global"]["evaluation_interval"] == "15s"
    assert prometheus_config["rule_files"] == [RULES.name]


def test_promtool_accepts_the_config(promtool: str, tmp_path: Path) -> None:
    """``promtool check config`` passes on the file as shipped, rule files included: with
    the generated alerts.yml when it is there, else with an empty rule file in its place."""
    config = tmp_path / PROMETHEUS_CONFIG.name
    shutil.copyfile(PROMETHEUS_CONFIG, config)
    if RULES.exists():
        shutil.copyfile(RULES, tmp_path / RULES.name)
    else:
        (tmp_path / RULES.name).write_text("groups: []\n")
    result = subprocess.run(
        [promtool, "check", "config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
