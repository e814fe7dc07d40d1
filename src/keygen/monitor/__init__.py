"""``keygen monitor`` (and ``scripts/monitor-id-service.py``): a terminal dashboard of one or
several instances.

Every ``--interval`` seconds each instance is read, on its own, from ``GET /health`` (a
``HealthSnapshot``), ``GET /metrics/history`` and ``GET /alerts`` (docs/monitoring.md): one that
is down or hangs shows as unreachable, with the error, while the others go on. An instance
without history or alerts (an older version) shows what it has and says what it lacks.
``--once`` prints one snapshot and exits with the worst instance's verdict, for scripts.

    fetch.py   what the monitor learns of an instance, and how it reads it (``refresh``)
    render.py  the screen: a panel per instance, trend sparklines (rich)
    cli.py     the command line's options, and the loop that refreshes and shows

Only the standard library is imported with the parser; rich, httpx and msgspec when the
command runs, so that ``keygen serve`` does not pay for them.
"""

from __future__ import annotations

from keygen.monitor.cli import add_monitor_command, main, monitor
from keygen.monitor.fetch import (
    DEFAULT_INTERVAL,
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    DEFAULT_WINDOW,
    EXIT_DEGRADED,
    EXIT_DOWN,
    EXIT_HEALTHY,
    Instance,
    Options,
    refresh,
    verdict,
)
from keygen.monitor.render import render, sparkline

__all__ = [
    "DEFAULT_INTERVAL",
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "DEFAULT_WINDOW",
    "EXIT_DEGRADED",
    "EXIT_DOWN",
    "EXIT_HEALTHY",
    "Instance",
    "Options",
    "add_monitor_command",
    "main",
    "monitor",
    "refresh",
    "render",
    "sparkline",
    "verdict",
]
