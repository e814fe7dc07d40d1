"""The files under ``deploy/``, parsed once per module: the Compose file and the Prometheus
and Grafana configuration it mounts."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.files import COMPOSE, DASHBOARD_PROVIDERS, DATASOURCES, PROMETHEUS_CONFIG, load


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(COMPOSE)


@pytest.fixture(scope="module")
def prometheus_config() -> dict[str, Any]:
    return load(PROMETHEUS_CONFIG)


@pytest.fixture(scope="module")
def datasources() -> dict[str, Any]:
    return load(DATASOURCES)


@pytest.fixture(scope="module")
def dashboard_providers() -> dict[str, Any]:
    return load(DASHBOARD_PROVIDERS)
