"""Certificates for a local topology and its tests, made with ``openssl``: one private CA, a
server certificate for the loopback names (Redis, the Sentinels, PostgreSQL, Keygen itself)
and a client certificate (mTLS), all under one directory.

Made once per directory and reused: ``make_certificates`` on a directory that holds them
already returns them as they are. The keys are written 0600 (PostgreSQL refuses a key that
others can read).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from keygen.errors import ClusterError

#: The names every server certificate is valid for: a local topology listens on loopback.
LOOPBACK_NAMES = ("DNS:localhost", "IP:127.0.0.1", "IP:::1")
#: Days a certificate is valid: a local topology's lifetime, with room.
VALID_DAYS = 825
OPENSSL_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Certificates:
    """The PEM files of one directory."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.directory / "client.crt"

    @property
    def client_key(self) -> Path:
        return self.directory / "client.key"

    def exist(self) -> bool:
        return all(
            path.exists()
            for path in (
                self.ca,
                self.server_cert,
                self.server_key,
                self.client_cert,
                self.client_key,
            )
        )


def _openssl(*args: str | Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ClusterError("openssl is not installed (apt-get install openssl)")
    result = subprocess.run(
        [openssl, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=OPENSSL_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise ClusterError(f"openssl {args[0]} failed: {result.stderr.strip()[-500:]}")


def _key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
    os.chmod(path, 0o600)


def _signed(certs: Certificates, key: Path, cert: Path, subject: str, extensions: str) -> None:
    request = cert.with_suffix(".csr")
    extfile = cert.with_suffix(".ext")
    extfile.write_text(extensions)
    _openssl("req", "-new", "-key", key, "-subj", subject, "-out", request)
    _openssl(
        "x509", "-req", "-in", request, "-CA", certs.ca, "-CAkey", certs.ca_key,
        "-CAcreateserial", "-days", str(VALID_DAYS), "-sha256", "-extfile", extfile,
        "-out", cert,
    )  # fmt: skip
    request.unlink()
    extfile.unlink()


def make_certificates(directory: Path, names: tuple[str, ...] = LOOPBACK_NAMES) -> Certificates:
    """The CA, server and client certificates in ``directory``, made when missing.

    Args:
        names: subjectAltName entries of the server certificate (``DNS:host``, ``IP:addr``).

    Raises:
        ClusterError: openssl is missing or failed.
    """
    certs = Certificates(directory)
    if certs.exist():
        return certs
    directory.mkdir(parents=True, exist_ok=True)
    _key(certs.ca_key)
    _openssl(
        "req", "-x509", "-new", "-key", certs.ca_key, "-subj", "/CN=Keygen local CA",
        "-days", str(VALID_DAYS), "-sha256", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", certs.ca,
    )  # fmt: skip
    _key(certs.server_key)
    _signed(
        certs,
        certs.server_key,
        certs.server_cert,
        "/CN=localhost",
        f"subjectAltName={','.join(names)}\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    _key(certs.client_key)
    _signed(
        certs,
        certs.client_key,
        certs.client_cert,
        "/CN=keygen-client",
        "extendedKeyUsage=clientAuth\n",
    )
    return certs
