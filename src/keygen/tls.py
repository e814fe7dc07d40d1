"""``keygen serve`` over TLS: its ``--ssl-*`` flags, the files checked before uvicorn
starts, and the event loop that bounds a client's handshake (docs/tls.md)."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import ssl
from typing import Any

from keygen.config import Settings

__all__ = ["CERT_REQS", "apply_tls_flags", "client_tls_problem", "event_loop", "tls_problem"]

#: ``KEYGEN_SSL_CLIENT_CERT`` as the ``ssl`` module's verify modes.
CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
#: The ``--ssl-*`` flags of ``keygen serve`` and the settings each overrides.
_TLS_FLAGS = {
    "ssl_certfile": "KEYGEN_SSL_CERTFILE",
    "ssl_keyfile": "KEYGEN_SSL_KEYFILE",
    "ssl_ca_certs": "KEYGEN_SSL_CA_CERTS",
    "ssl_client_cert": "KEYGEN_SSL_CLIENT_CERT",
}


def apply_tls_flags(args: argparse.Namespace) -> None:
    """Lay the ``--ssl-*`` flags given over the ``KEYGEN_SSL_*`` settings, in the environment:
    the workers read their settings from it, and the settings' checks apply to both."""
    for name, variable in _TLS_FLAGS.items():
        value = getattr(args, name, None)
        if value is not None:
            os.environ[variable] = str(value)


def tls_problem(settings: Settings) -> str | None:
    """Why the service's certificate, key or CA files cannot serve TLS, if they cannot:
    found at start-up rather than by uvicorn, with a traceback, in every worker."""
    if settings.ssl_certfile is None or settings.ssl_keyfile is None:
        return None
    files = {
        "KEYGEN_SSL_CERTFILE": settings.ssl_certfile,
        "KEYGEN_SSL_KEYFILE": settings.ssl_keyfile,
        "KEYGEN_SSL_CA_CERTS": settings.ssl_ca_certs,
    }
    for variable, path in files.items():
        if path is None:
            continue
        try:
            path.open("rb").close()
        except OSError as exc:
            flag = "--" + variable.removeprefix("KEYGEN_").lower().replace("_", "-")
            return f"{variable} ({flag}): cannot read {path}: {exc.strerror or exc}"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # An empty password: an encrypted key fails here rather than prompting on a terminal.
        context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile, password=b"")
    except ssl.SSLError as exc:
        return (
            f"KEYGEN_SSL_CERTFILE and KEYGEN_SSL_KEYFILE: {settings.ssl_certfile} and "
            f"{settings.ssl_keyfile} are not a PEM certificate chain and its unencrypted "
            f"private key ({exc.reason or exc})"
        )
    if settings.ssl_ca_certs is not None:
        try:
            context.load_verify_locations(settings.ssl_ca_certs)
        except ssl.SSLError as exc:
            return (
                f"KEYGEN_SSL_CA_CERTS: {settings.ssl_ca_certs} holds no PEM CA certificate "
                f"({exc.reason or exc})"
            )
    return None


def client_tls_problem(
    ca_certs: str | None, client_cert: str | None, client_key: str | None
) -> str | None:
    """Why a client command's ``--ca-certs``, ``--client-cert`` or ``--client-key`` file
    cannot be used, if it cannot: one line naming the option, the file and the cause (the
    ``ssl`` module's own errors name neither the option nor the file)."""
    files = {"--ca-certs": ca_certs, "--client-cert": client_cert, "--client-key": client_key}
    for flag, path in files.items():
        if path is None or (flag == "--ca-certs" and os.path.isdir(path)):  # a CA directory
            continue
        try:
            open(path, "rb").close()
        except OSError as exc:
            return f"{flag} {path}: cannot read it: {exc.strerror or exc}"
    if ca_certs is not None:
        directory = os.path.isdir(ca_certs)
        try:
            ssl.create_default_context(
                cafile=None if directory else ca_certs, capath=ca_certs if directory else None
            )
        except ssl.SSLError as exc:
            return f"--ca-certs {ca_certs}: holds no PEM CA certificate ({_reason(exc)})"
    if client_cert is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            # An empty password: an encrypted key fails here rather than prompting.
            context.load_cert_chain(client_cert, client_key, password=b"")
        except ssl.SSLError as exc:
            named = f"--client-cert {client_cert}"
            if client_key is not None:
                named += f" and --client-key {client_key}"
            return (
                f"{named}: not a PEM certificate and its unencrypted private key ({_reason(exc)})"
            )
    return None


def _reason(exc: ssl.SSLError) -> str:
    """The ``ssl`` module's reason, without the C source line it may end with."""
    return exc.reason or re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(exc.args[-1]))


def event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop, whose TLS servers give a client ``KEYGEN_HEADER_TIMEOUT`` to
    complete its handshake (``keygen serve`` with TLS names it to uvicorn as its loop).

    The edge's header timer starts only once the handshake is done (the protocol hears of
    the connection then), and uvicorn passes no handshake timeout, so without this a client
    that connects and never finishes its handshake holds the connection for uvloop's
    default, 60 s, outside ``KEYGEN_MAX_CONNECTIONS``.
    """
    import uvloop

    timeout = Settings().header_timeout

    class Loop(uvloop.Loop):
        async def create_server(self, *args: Any, **kwargs: Any) -> Any:  # a server
            if kwargs.get("ssl") is not None:
                kwargs.setdefault("ssl_handshake_timeout", timeout)
            return await super().create_server(*args, **kwargs)

    loop: asyncio.AbstractEventLoop = Loop()
    return loop
