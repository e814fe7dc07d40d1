"""``keygen serve`` instances as child processes, each on a fixed port in a group of its own."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
import msgspec

from keygen.errors import ClusterError
from keygen.snapshots import HealthSnapshot

__all__ = ["ServiceInstance"]


class ServiceInstance:
    """One ``keygen serve`` on ``127.0.0.1:port`` with its own data dir and log.

    It keeps its port across restarts, so the load's clients find it again.
    """

    def __init__(
        self,
        name: str,
        port: int,
        env: Mapping[str, str],
        directory: Path,
        *,
        workers: int = 1,
        log_path: Path | None = None,
    ) -> None:
        """``env`` is laid over the process's own environment and over the defaults: the
        instance ID ``name`` and the data dir ``directory/data``."""
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        #: How its certificate is checked when ``url`` is https (httpx's ``verify``).
        self.verify: ssl.SSLContext | bool = True
        self.directory = directory
        self.workers = workers
        self.log_path = log_path or directory / "serve.log"
        self.env = {
            "KEYGEN_INSTANCE_ID": name,
            "KEYGEN_DATA_DIR": str(directory / "data"),
            **os.environ,
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 30.0) -> None:
        """Start it and wait until ``/health`` answers (200 or 503)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "keygen",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    str(self.workers),
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ClusterError(f"{self.name} exited while starting:\n{self.log_tail()}")
            try:
                response = httpx.get(f"{self.url}/health", timeout=1, verify=self.verify)
                if response.status_code in (200, 503):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise ClusterError(f"{self.name} not ready in {timeout:g}s:\n{self.log_tail()}")

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 30.0) -> None:
        """Signal the whole process group and wait for the server to exit."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout)
        if sig == signal.SIGKILL:
            _wait_group_gone(self.proc.pid)  # workers, too, before anyone reuses the data dir
        self.proc = None

    def stop(self) -> None:
        """SIGTERM: uvicorn drains the requests in flight, then exits."""
        self.kill(signal.SIGTERM)

    def health(self) -> HealthSnapshot | None:
        """``/health``; None if it does not answer."""
        try:
            response = httpx.get(f"{self.url}/health", timeout=5, verify=self.verify)
            return msgspec.json.decode(response.content, type=HealthSnapshot)
        except (httpx.HTTPError, msgspec.DecodeError):
            return None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _wait_group_gone(pgid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
