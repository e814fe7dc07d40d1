"""Credentials out of URLs, DSNs and request targets before they are shown: health, logs,
errors, CLI output, the access log; and control characters out of names people typed."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"

#: Query keys (and libpq ``key=value`` words) whose value is a secret.
SECRET_KEYS = frozenset({"password", "pass", "passwd", "pwd", "sslpassword", "secret", "token"})

_KEY_VALUE = re.compile(
    r"\b(password|passwd|pwd|sslpassword|secret|token)\s*=\s*('[^']*'|\S+)", re.I
)


def redact_url(url: str) -> str:
    """``url`` (postgresql://, redis://, http://, ... or a libpq ``key=value`` DSN) with every
    password masked: in the userinfo, in the query (``password=``, ``sslpassword=``)."""
    if "://" not in url:
        return _KEY_VALUE.sub(lambda m: f"{m.group(1)}={MASK}", url)
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user, sep, _ = userinfo.partition(":")
            netloc = f"{user}:{MASK}@{host}" if sep else f"{userinfo}@{host}"
            if not sep and parts.scheme.startswith(("redis", "rediss")):
                netloc = f"{MASK}@{host}"  # redis://secret@host: the lone word is the password
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(key.lower() in SECRET_KEYS for key, _ in pairs):
                query = urlencode(
                    [(k, MASK if k.lower() in SECRET_KEYS else v) for k, v in pairs], safe="*"
                )
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        return "<unparsable URL>"


def redact_target(target: str) -> str:
    """A request target (``/path?query``, or an absolute URL) as it may be logged: every
    query value masked, whatever its name (``?api_key=***&x=***``, a bare word too), and
    an absolute URL's userinfo. A token sent in a query string is a credential under any
    name."""
    scheme, sep, rest = target.partition("://")
    if sep:
        authority, slash, tail = rest.partition("/")
        if "@" in authority:
            target = f"{scheme}://{MASK}@{authority.rpartition('@')[2]}{slash}{tail}"
    path, sep, query = target.partition("?")
    if not sep:
        return target
    masked = []
    for part in query.split("&"):
        name, eq, value = part.partition("=")
        if eq:
            masked.append(f"{name}={MASK}" if value else part)
        else:
            masked.append(MASK if part else part)
    return f"{path}?{'&'.join(masked)}"


def redact_text(text: str, *secrets: str | None) -> str:
    """``text`` with each of ``secrets`` (URLs whose credentials might be quoted in it, e.g.
    in a driver's error message) replaced by its redacted form, and ``password=...`` words
    masked."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, redact_url(secret))
    return _KEY_VALUE.sub(lambda m: f"{m.group(1)}={MASK}", text)


def printable(text: str) -> str:
    """``text`` with its control and format characters (a newline, an ANSI escape, a bidi
    override) written as escapes: a name someone typed must not forge a log line or reach a
    terminal raw."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii")
        for c in text
    )
