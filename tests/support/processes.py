"""Real processes for end-to-end tests: ``keygen serve`` on a free port, and how to kill it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from keygen.chaos.instances import ServiceInstance
from keygen.cluster.processes import free_port

__all__ = ["ServeProcess", "free_port"]


class ServeProcess(ServiceInstance):
    """``keygen serve`` on a free port, in its own process group (workers included), its log
    at ``log`` and its data dir beside it unless ``env`` names one; ``/health`` always fresh
    (``KEYGEN_HEALTH_MAX_AGE=0``) unless ``env`` says otherwise."""

    def __init__(
        self, env: Mapping[str, str], *, workers: int = 1, log: Path, port: int | None = None
    ) -> None:
        port = port or free_port()
        super().__init__(
            f"test-{port}",
            port,
            env,
            log.parent / f"instance-{port}",
            workers=workers,
            log_path=log,
        )
        if "KEYGEN_INSTANCE_ID" not in env:
            del self.env["KEYGEN_INSTANCE_ID"]  # each process names itself: hostname-pid
        # Tests read /health right after they break or mend something: it asks the layers
        # at every read rather than showing the last background probe's answer (a second
        # old at most). What the probes do is tested on their own (tests/e2e/test_recovery.py).
        self.env.setdefault("KEYGEN_HEALTH_MAX_AGE", "0")

    def start(self, timeout: float = 30.0) -> ServeProcess:  # type: ignore[override]
        super().start(timeout)
        return self
