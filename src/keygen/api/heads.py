"""What a request's head must be before anything of it is served (``protocol.py`` asks).

RFC 9112 and 9110 make a request invalid, to be answered with a 400, when its ``Host`` is
missing (HTTP/1.1), repeated or not a host; a field that is a single value (``Host``,
``Authorization``) given twice is as ambiguous: two readers of the same bytes (a proxy in
front, the service) could each take another one of them. The request target must be a
path of this service: an absolute URI may name the host ``Host`` names, without userinfo;
CONNECT and ``*`` ask for nothing the service has.

Nothing here runs per header of an ordinary request except a set lookup (``SCREENED``):
the protocol calls in only for the fields named there, and for targets that are not a
path.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

import httptools

from keygen.errors import BadHeader, BadTarget
from keygen.redact import redact_target

#: The fields the protocol looks at as they are parsed (``KeygenHttpProtocol.on_header``;
#: "expect" is uvicorn's 100-continue, which it keeps).
SCREENED = frozenset({b"host", b"authorization", b"te", b"transfer-encoding", b"expect"})
#: Bits of the fields seen once in a head (``Host`` keeps its value instead).
AUTHORIZATION = 1

#: RFC 3986's host (an IP literal, or a reg-name, which covers IPv4) and an optional port.
#: IPvFuture literals are not taken.
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%!$&'()*+,;=-]*)(?::[0-9]{0,5})?")
#: How many distinct valid hosts a server remembers, so that each request's Host is a set
#: lookup rather than a pattern match (the set starts again past it).
KNOWN_HOSTS = 64
#: Codings refused in TE: "chunked" (always accepted, so never listed: RFC 9112 §7.4) and
#: "identity" (no coding at all). A TE naming them is no client's, but a probe of how a
#: proxy in front and the service read the same bytes.
_REFUSED_IN_TE = frozenset({b"chunked", b"identity"})


def valid_host(value: bytes) -> bool:
    """Whether ``value`` is a ``Host`` field value: ``host[:port]``, nothing else (no
    userinfo, no path, no spaces)."""
    return _HOST.fullmatch(value) is not None


def check_host(value: bytes, known: set[bytes]) -> None:
    """Refuse a ``Host`` that is not a host; ``known`` remembers those that were.

    Raises:
        BadHeader: not ``host[:port]``.
    """
    if not valid_host(value):
        shown = value.decode("latin-1")[:80]
        raise BadHeader(f"Host must be host[:port], got {shown!r} (RFC 9112, section 3.2)")
    if len(known) >= KNOWN_HOSTS:
        known.clear()
    known.add(value)


def repeated(name: bytes) -> BadHeader:
    """The refusal of a field that holds one value, given twice."""
    field = name.decode("latin-1").title()
    return BadHeader(f"{field} given twice: it holds one value (RFC 9110, section 5.3)")


def missing_host() -> BadHeader:
    return BadHeader("an HTTP/1.1 request needs a Host header (RFC 9112, section 3.2)")


def check_coding(name: bytes, value: bytes) -> None:
    """Refuse a transfer coding the service does not take: a body in any coding but
    ``chunked`` alone (the service decodes no other; RFC 9112 §6.1), a TE listing
    ``chunked`` or ``identity``.

    Raises:
        BadHeader: the coding is refused.
    """
    codings = [part.split(b";", 1)[0].strip().lower() for part in value.split(b",")]
    shown = value.decode("latin-1")[:80]
    if name == b"transfer-encoding":
        if codings != [b"chunked"]:
            raise BadHeader(f"Transfer-Encoding must be chunked alone, got {shown!r}")
    elif _REFUSED_IN_TE.intersection(codings):
        raise BadHeader(f"TE may list neither chunked nor identity, got {shown!r}")


def host_name(host: bytes) -> bytes:
    """A ``Host`` value without its port, lowercase (``[::1]:8010`` gives ``::1``)."""
    host = host.lower()
    if host.startswith(b"["):
        return host[1:].partition(b"]")[0]
    return host.rpartition(b":")[0] if b":" in host else host


def connect() -> BadTarget:
    """The refusal of CONNECT, whatever its target."""
    return BadTarget("CONNECT asks for a tunnel: this service is not a proxy")


def check_target(url: bytes, method: bytes, host: bytes | None) -> None:
    """Refuse a request target that is not a path of this service (``url`` does not start
    with ``/``): CONNECT's authority, ``*``, or an absolute URI that does not parse, carries
    userinfo or names another host than ``host``.

    Raises:
        BadTarget: the target is refused.
    """
    if method == b"CONNECT":
        raise connect()
    shown = redact_target(url.decode("latin-1"))[:80]
    try:
        parsed = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError:
        raise BadTarget(f"the request target is not a URI: {shown!r}") from None
    if parsed.schema is None or parsed.host is None:
        raise BadTarget(f"the request target must be a path (/...), got {shown!r}")
    if parsed.userinfo is not None:
        raise BadTarget("the request target carries userinfo (RFC 9110, section 4.2.4)")
    if host is None or parsed.host.lower() != host_name(host):
        raise BadTarget(f"the request target names another host than Host: {shown!r}")


def replayed_head(
    method: bytes, url: bytes, version: str, headers: Iterable[tuple[bytes, bytes]]
) -> bytes:
    """The request's head as it would be without ``Upgrade``: what a fresh parser is given
    to read the body as this request's (``protocol.py``)."""
    lines = [b"%s %s HTTP/%s\r\n" % (method, url, version.encode("ascii"))]
    lines.extend(b"%s: %s\r\n" % (name, value) for name, value in headers if name != b"upgrade")
    lines.append(b"\r\n")
    return b"".join(lines)


class RedactQuery(logging.Filter):
    """Masks every query value in uvicorn's access log lines (``"GET /path?k=*** HTTP/1.1"``):
    a token sent in a query must not be written to the log, and any name may carry one."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn's format: client, method, path with its query, HTTP version, status.
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            if "?" in args[2]:
                record.args = (args[0], args[1], redact_target(args[2]), *args[3:])
        return True
