"""Real processes for end-to-end tests: ``keygen serve`` on a free port, and how to kill it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from keygen.chaos.instances import ServiceInstance
from keygen.client import tls_context
from keygen.cluster.certs import Certificates
from keygen.cluster.processes import free_port

__all__ = ["ServeProcess", "free_port", "keygen", "scratch_dir"]


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A temporary directory the ``postgres`` user can reach (pytest's tmp_path is 0700
    root's), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class ServeProcess(ServiceInstance):
    """``keygen serve`` on a free port, in its own process group (workers included), its log
    at ``log`` and its data dir beside it unless ``env`` names one; ``/health`` always fresh
    (``KEYGEN_HEALTH_MAX_AGE=0``) unless ``env`` says otherwise.

    With ``tls``, it serves HTTPS with ``tls``'s server certificate (``client_cert``: the
    mTLS mode, checked against ``tls``'s CA); ``url`` is then ``https://``, and ``verify``
    (httpx's ``verify``) trusts that CA and shows ``tls``'s client certificate.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        workers: int = 1,
        log: Path,
        port: int | None = None,
        tls: Certificates | None = None,
        client_cert: Literal["none", "optional", "required"] = "none",
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
        self.tls = tls
        if tls is not None:
            self.url = f"https://127.0.0.1:{port}"
            self.env.update(
                KEYGEN_SSL_CERTFILE=str(tls.server_cert),
                KEYGEN_SSL_KEYFILE=str(tls.server_key),
                KEYGEN_SSL_CA_CERTS=str(tls.ca),
                KEYGEN_SSL_CLIENT_CERT=client_cert,
            )
            self.verify = tls_context(tls.ca, (tls.client_cert, tls.client_key))

    def start(self, timeout: float = 30.0) -> ServeProcess:  # type: ignore[override]
        super().start(timeout)
        return self


def keygen(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``keygen ARGS`` as a user runs it, with ``env`` over this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "keygen", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
