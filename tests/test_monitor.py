"""``keygen monitor`` and ``scripts/monitor-id-service.py``: against real ``keygen serve``
processes, an address where nothing listens, and the documents of docs/monitoring.md."""

from __future__ import annotations

import asyncio
import fcntl
import io
import json
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from rich.console import Console

from keygen.cli import main as keygen_main
from keygen.monitor import (
    EXIT_DEGRADED,
    EXIT_DOWN,
    EXIT_HEALTHY,
    Instance,
    Options,
    refresh,
    render,
    sparkline,
    verdict,
)
from keygen.snapshots import AlertsDocument, HealthSnapshot, HistoryDocument
from tests.support.processes import ServeProcess, free_port
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "monitor-id-service.py"
#: Wide enough that no figure wraps.
WIDE = {"COLUMNS": "200"}
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env={**os.environ, **WIDE, **(env or {})}
    )


def keygen_monitor(*args: str) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, "-m", "keygen", "monitor", *args)


def nowhere() -> str:
    """The URL of a port where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


def allocate(url: str, times: int, size: int = 7) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(times):
            client.post("/allocate", json={"size": size}).raise_for_status()


def figure(name: str, value: int, text: str) -> bool:
    """Whether ``text`` shows the figure ``name`` with ``value``."""
    return re.search(rf"{re.escape(name)}\s+{value:,}(?![\d,])", text) is not None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One ``keygen serve`` on the embedded ledger, for the module's tests."""
    tmp = tmp_path_factory.mktemp("monitor")
    process = ServeProcess({"KEYGEN_DATA_DIR": str(tmp / "data")}, log=tmp / "serve.log")
    process.start()
    try:
        yield process
    finally:
        process.stop()


def health_of(server: ServeProcess) -> HealthSnapshot:
    health = server.health()
    assert health is not None, server.log_tail()
    return health


# --- Against real instances --------------------------------------------------------------


@pytest.mark.e2e
def test_once_names_the_instance_and_its_figures(server: ServeProcess) -> None:
    """--once after some allocations exits 0 and shows the instance, its layer and figures."""
    allocate(server.url, 5)
    health = health_of(server)
    result = keygen_monitor("--once", "--url", server.url)
    assert result.returncode == EXIT_HEALTHY, result.stdout + result.stderr
    out = result.stdout
    assert server.url in out and health.instance_id in out, out
    assert "1 instance: 1 healthy" in out
    assert re.search(r"sqlite\s+healthy\s+closed", out), out
    assert figure("allocations", health.metrics.total_allocations, out), out
    assert figure("IDs allocated", health.metrics.ids_allocated, out), out
    assert health.metrics.total_allocations >= 5


@pytest.mark.e2e
def test_once_shows_the_services_trends_and_alerts(server: ServeProcess) -> None:
    """With /metrics/history and /alerts served, --once draws the allocation rate's sparkline
    and says that no alert fires."""
    allocate(server.url, 5)

    def history_shows_them() -> bool:
        response = httpx.get(f"{server.url}/metrics/history?window=5m", timeout=5)
        assert response.status_code == 200, f"/metrics/history: {response.status_code}"
        rates = response.json()["series"]["requests_per_second"]
        return sum(r or 0 for r in rates) > 0

    wait_for(history_shows_them, 10, "the allocations in the history")
    result = keygen_monitor("--once", "--url", server.url)
    assert result.returncode == EXIT_HEALTHY, result.stdout + result.stderr
    out = result.stdout
    assert "trends, last 5 min" in out, out
    row = re.search(r"allocations/s\s+(\S+)\s+\S+\s+(\S+)", out)
    assert row is not None, out
    assert set(row.group(1)) - {" "} <= set("▁▂▃▄▅▆▇█"), row.group(0)
    assert float(row.group(2).replace(",", "")) > 0, row.group(0)  # the max of the window
    assert "alerts: none firing" in out, out


def test_once_against_nothing_listening() -> None:
    """--once where nothing listens exits 2 and says the instance is unreachable, and why."""
    url = nowhere()
    started = time.monotonic()
    result = keygen_monitor("--once", "--url", url)
    assert result.returncode == EXIT_DOWN, result.stdout + result.stderr
    assert url in result.stdout and "unreachable" in result.stdout
    assert "Connection refused" in result.stdout
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 10


@pytest.mark.e2e
def test_once_with_one_instance_down_shows_both(server: ServeProcess) -> None:
    """With one live and one dead instance, both are shown, the live one in full, and --once
    exits 2."""
    dead = nowhere()
    result = keygen_monitor("--once", "--url", server.url, "--url", dead)
    assert result.returncode == EXIT_DOWN, result.stdout + result.stderr
    out = result.stdout
    assert "2 instances: 1 healthy, 1 unreachable" in out, out
    assert server.url in out and dead in out
    assert figure("allocations", health_of(server).metrics.total_allocations, out), out
    assert out.index(server.url) < out.index(dead)  # in the order given


def test_frames_on_a_pipe_print_a_snapshot_per_refresh() -> None:
    """Off a terminal, each refresh prints a snapshot; --frames N stops after N of them."""
    result = keygen_monitor("--url", nowhere(), "--interval", "0.1", "--frames", "3")
    assert result.returncode == EXIT_DOWN, result.stderr
    assert result.stdout.count("Keygen monitor ·") == 3, result.stdout


class Terminal:
    """A program on a pseudo-terminal of 50 x 160, its screen's text accumulated."""

    def __init__(self, argv: list[str]) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**env, "TERM": "xterm-256color"},
            start_new_session=True,
        )
        os.close(slave)
        self.raw = b""

    def read(self, timeout: float) -> bool:
        """Read what the program wrote within ``timeout``; False once there is nothing more."""
        if not select.select([self.master], [], [], timeout)[0]:
            return False
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: the program has closed the terminal
            return False
        self.raw += chunk
        return bool(chunk)

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw.decode(errors="replace"))

    def wait_for(self, condition: Callable[[str], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition(self.text):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"screen never showed {what}:\n{self.text[-3000:]}")
            self.read(0.1)

    def close(self) -> int:
        try:
            code = self.proc.wait(10)
            while self.read(0.1):
                pass
            return code
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            os.close(self.master)


@pytest.mark.e2e
def test_live_screen_refreshes_until_ctrl_c(server: ServeProcess) -> None:
    """On a terminal the screen redraws each interval: allocations made while it runs show,
    and Ctrl-C leaves the alternate screen with exit status 0."""
    before = health_of(server).metrics.total_allocations
    terminal = Terminal(
        [sys.executable, "-m", "keygen", "monitor", "--url", server.url, "--interval", "0.2"]
    )
    try:
        terminal.wait_for(lambda t: figure("allocations", before, t), 15, f"{before} allocations")
        allocate(server.url, 3)
        terminal.wait_for(
            lambda t: figure("allocations", before + 3, t), 10, f"{before + 3} allocations"
        )
        assert "Ctrl-C quits" in terminal.text
        terminal.proc.send_signal(signal.SIGINT)
    finally:
        code = terminal.close()
    assert code == 0, terminal.text[-3000:]
    raw = terminal.raw.decode(errors="replace")
    assert "\x1b[?1049h" in raw and raw.rindex("\x1b[?1049l") > raw.rindex("\x1b[?1049h")
    assert "Traceback" not in terminal.text


# --- The script and the command line -----------------------------------------------------


def test_script_is_keygen_monitor() -> None:
    """scripts/monitor-id-service.py takes keygen monitor's options and shows their defaults."""
    script = run(sys.executable, str(SCRIPT), "--help")
    command = keygen_monitor("--help")
    assert script.returncode == 0 == command.returncode, script.stderr + command.stderr
    assert script.stdout.startswith("usage: monitor-id-service.py")
    options = command.stdout.split("options:")[1]
    assert script.stdout.split("options:")[1] == options
    for default in ("http://127.0.0.1:8010", "(default: 1)", "(default: 2)", "(default: 5m)"):
        assert default in " ".join(options.split()), options


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(), reason="no .venv")
def test_script_runs_under_the_projects_venv_from_any_python() -> None:
    """A Python that cannot import keygen (here: without site-packages) hands the script to
    the project's .venv, as the Quick Start's ``python scripts/monitor-id-service.py`` needs."""
    result = run(sys.executable, "-S", str(SCRIPT), "--once", "--url", nowhere())
    assert result.returncode == EXIT_DOWN, result.stdout + result.stderr
    assert "unreachable" in result.stdout


def test_script_says_how_to_install(tmp_path: Path) -> None:
    """Without keygen and without a .venv beside it, the script says how to install."""
    (tmp_path / "scripts").mkdir()
    copy = tmp_path / "scripts" / SCRIPT.name
    shutil.copy(SCRIPT, copy)
    result = run(sys.executable, "-S", str(copy), "--once", env={"PYTHONPATH": ""})
    assert result.returncode == 2
    assert "keygen is not installed" in result.stderr and "scripts/install" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--url", "ftp://example"], "is not an instance's URL"),
        (["--url", "http://host:port"], "is not an instance's URL"),
        (["--interval", "0"], "is not a positive number of seconds"),
        (["--timeout", "soon"], "is not a positive number of seconds"),
        (["--window", "5 minutes"], "is not a window such as 30s, 5m, 1h or 300"),
        (["--frames", "-1"], "must be at least 1, got -1"),
    ],
)
def test_bad_options_are_refused_clearly(
    option: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad option stops the command with usage and the reason, before reading anything."""
    with pytest.raises(SystemExit) as stopped:
        keygen_main(["monitor", *option])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


# --- The documents of docs/monitoring.md, in process -------------------------------------


def health_document(**changes: Any) -> dict[str, Any]:
    """A /health document (of an instance on Redis and PostgreSQL), with ``changes``."""
    return {**HEALTH, "redis": {**HEALTH["redis"], "last_failover_at": time.time() - 90}, **changes}


HEALTH: dict[str, Any] = {
    "status": "degraded",
    "redis_health": "healthy",
    "postgresql_health": "unhealthy",
    "active_locks": 1,
    "metrics": {
        "total_allocations": 15000,
        "redis_allocations": 14500,
        "postgresql_allocations": 500,
        "failed_allocations": 3,
        "allocations_by_source": {"redis_sentinel": 14500, "postgresql": 500},
        "ids_allocated": 15_000_000,
        "avg_allocation_time_ms": 2.34,
        "p95_allocation_time_ms": 4.2,
    },
    "ledger": "postgresql",
    "layers": [
        {
            "source": "redis_sentinel",
            "health": "healthy",
            "breaker": "closed",
            "latency_ms": 0.3,
            "error": None,
        },
        {
            "source": "postgresql",
            "health": "unhealthy",
            "breaker": "open",
            "latency_ms": None,
            "error": "connection refused",
        },
    ],
    "instance_id": "keygen-a",
    "version": "0.1.0",
    "uptime_seconds": 3600.0,
    "workers": 2,
    "redis": {
        "master": "127.0.0.1:6380",
        "sentinel_quorum": True,
        "failovers": 2,
        "last_failover_at": None,
        "lease_refills": 4,
        "ids_wasted": 0,
    },
}


def history(points: int = 300) -> dict[str, Any]:
    """A /metrics/history document as docs/monitoring.md draws it."""
    now = time.time()
    ramp = [float(i % 50) for i in range(points)]
    series: dict[str, list[Any]] = {
        "time": [now - points + i for i in range(points)],
        "requests_per_second": list(ramp),
        "error_rate": [0.0] * (points - 1) + [0.02],
        "rate_redis_sentinel": list(ramp),
        "rate_postgresql": [0.0] * points,
        "rate_emergency_reserve": [None] * points,
        "rate_sqlite": [None] * points,
        "latency_p50_ms": [None if i % 7 == 0 else 1.0 for i in range(points)],
        "latency_p95_ms": [3.0] * points,
        "latency_p99_ms": [9.5] * points,
        "layer_up_redis_sentinel": [1.0] * points,
        "layer_up_postgresql": [1.0] * (points - 40) + [0.0] * 40,
        "layer_up_emergency_reserve": [None] * points,
        "layer_up_sqlite": [None] * points,
        "breaker_open_redis_sentinel": [0.0] * points,
        "breaker_open_postgresql": [0.0] * (points - 30) + [1.0] * 30,
        "breaker_open_emergency_reserve": [None] * points,
        "breaker_open_sqlite": [None] * points,
        "reserve_remaining_ids": [None] * points,
        "reserve_remaining_seconds": [None] * points,
        "redis_failovers": [1.0] * (points - 90) + [2.0] * 90,
        "active_locks": [0.0] * (points - 1) + [1.0],
    }
    return {"window_seconds": points, "step_seconds": 1, "series": series}


def alerts_document() -> dict[str, Any]:
    """A /alerts document as docs/monitoring.md draws it: one firing, one pending."""
    return {
        "evaluated_at": time.time(),
        "alerts": [{**ALERTS[0], "since": time.time() - 10}, *ALERTS[1:]],
    }


ALERT: dict[str, Any] = {
    "since": None,
    "value": None,
    "threshold": 1.0,
    "labels": {},
    "summary": "",
    "runbook": "",
}
ALERTS: list[dict[str, Any]] = [
    {
        "name": "KeygenLayerDown",
        "severity": "critical",
        "state": "firing",
        "since": None,
        "value": 0.0,
        "threshold": 1.0,
        "labels": {"source": "postgresql"},
        "summary": "postgresql fails its probes",
        "runbook": "docs/monitoring.md#keygenlayerdown",
    },
    {**ALERT, "name": "KeygenRedisFailover", "severity": "warning", "state": "pending"},
    {**ALERT, "name": "KeygenLatencyHigh", "severity": "warning", "state": "inactive"},
]


def screen(*instances: Instance, width: int = 150) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(render(instances, width))
    return console.export_text()


def decoded(document: dict[str, Any], kind: type[Any]) -> Any:
    return msgspec.json.decode(json.dumps(document), type=kind)


def test_the_contracts_documents_render_trends_and_alerts() -> None:
    """Health, history and alerts in the documented shapes show as layers, figures, the Redis
    master, firing alerts and sparklines."""
    instance = Instance(
        "http://keygen-a:8010",
        health=decoded(health_document(), HealthSnapshot),
        history=decoded(history(), HistoryDocument),
        alerts=decoded(alerts_document(), AlertsDocument),
    )
    text = screen(instance)
    assert "1 instance: 1 degraded" in text
    assert re.search(r"postgresql\s+unhealthy\s+open\s+-\s+\S+\s+connection refused", text), text
    assert "127.0.0.1:6380 (quorum ok)" in text and "2 (last 90 s ago)" in text
    assert "alerts: 1 firing · 1 pending" in text
    assert re.search(r"critical\s+KeygenLayerDown\s+source=postgresql\s+10 s ago", text), text
    assert "trends, last 5 min" in text
    assert re.search(r"allocations/s\s+[▁-█]{20,}\s+49\s+49", text), text
    assert re.search(r"error rate\s+[▁-█]+\s+2%\s+2%", text), text
    assert re.search(r"failovers\s+[▁-█]+\s+2\s+2", text), text
    assert "reserve IDs" not in text  # no reserve configured: no empty row for it
    assert "p50 1 · p95 3 · p99 9.5 ms" in text
    assert verdict([instance]) == EXIT_DEGRADED


def test_an_older_instance_without_history_or_alerts() -> None:
    """An instance that answers 404 on /metrics/history and /alerts shows its health, says what
    it lacks, and its rate comes from successive answers."""
    served: list[str] = []
    total = 10

    def handler(request: httpx.Request) -> httpx.Response:
        served.append(request.url.path)
        if request.url.path == "/health":
            metrics = {**HEALTH["metrics"], "total_allocations": total}
            return httpx.Response(200, json=health_document(status="healthy", metrics=metrics))
        message = f"no such path: {request.url.path}"
        return httpx.Response(404, json={"error": {"code": "not_found", "message": message}})

    instance = Instance("http://old:8010")

    async def twice() -> None:
        nonlocal total
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            await refresh(client, instance, Options())
            total = 30
            await asyncio.sleep(0.05)
            await refresh(client, instance, Options())

    asyncio.run(twice())
    assert set(served) == {"/health", "/metrics/history", "/alerts"}
    assert instance.verdict == EXIT_HEALTHY and instance.polled_rate is not None
    assert 0 < instance.polled_rate <= 20 / 0.05
    text = screen(instance)
    assert "trends: unavailable (/metrics/history answered HTTP 404: not_found" in text
    assert "alerts: unavailable (/alerts answered HTTP 404: not_found" in text
    assert "avg 2.34 · p95 4.2 ms" in text


def test_a_hanging_instance_is_unreachable_after_its_timeout() -> None:
    """An instance that accepts but never answers is unreachable after --timeout, and a
    malformed document is named rather than raised."""

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "hangs":
            await asyncio.sleep(30)
        if request.url.path == "/health":
            return httpx.Response(200, json=health_document())
        return httpx.Response(200, json={"window_seconds": "five minutes"})

    hangs, answers = Instance("http://hangs:8010"), Instance("http://answers:8010")

    async def both() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            options = Options(timeout=0.2)
            await asyncio.gather(refresh(client, hangs, options), refresh(client, answers, options))

    started = time.monotonic()
    asyncio.run(both())
    assert time.monotonic() - started < 5
    assert hangs.health is None and hangs.error == "no answer in 0.2 s"
    assert answers.health is not None and answers.history is None
    assert (
        answers.history_note is not None and "is not the document expected" in answers.history_note
    )
    assert verdict([hangs, answers]) == EXIT_DOWN
    assert "unreachable: no answer in 0.2 s" in screen(hangs, answers)


@pytest.mark.parametrize(
    ("statuses", "code"),
    [
        (["healthy", "healthy"], EXIT_HEALTHY),
        (["healthy", "degraded"], EXIT_DEGRADED),
        (["degraded", "unhealthy"], EXIT_DOWN),
        (["healthy", None], EXIT_DOWN),
    ],
)
def test_the_exit_status_is_the_worst_instances(statuses: list[str | None], code: int) -> None:
    """0 when all are healthy, 1 when one is degraded, 2 when one is unhealthy or unreachable."""
    instances = [
        Instance(f"http://{i}", health=decoded(health_document(status=s), HealthSnapshot))
        if s
        else Instance(f"http://{i}", error="cannot connect")
        for i, s in enumerate(statuses)
    ]
    assert verdict(instances) == code


def test_sparkline() -> None:
    """A sparkline scales from zero to the most, leaves gaps blank and fits its width."""
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7], 8) == "▁▂▃▄▅▆▇█"
    assert sparkline([None, 5.0, None], 10) == " █ "
    assert sparkline([3.0, 3.0], 5) == "██"  # from zero: a steady figure stands full
    assert sparkline([0.0, 0.0], 5) == "▁▁"
    assert sparkline([None, None], 5) == "  "
    assert sparkline([], 5) == "" and sparkline([1.0], 0) == ""
    rising = sparkline([float(i) for i in range(300)], 30)
    assert len(rising) == 30 and rising[0] == "▁" and rising[-1] == "█"
    assert list(rising) == sorted(rising)
    assert len(sparkline([1.0] * 301, 40)) == 40
