"""Credentials out of URLs and DSNs before they are shown: health, logs, errors, CLI output."""

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


def redact_text(text: str, *secrets: str | None) -> str:
    """``text`` with each of ``secrets`` (URLs whose credentials might be quoted in it, e.g.
    in a driver's error message) replaced by its redacted form, and ``password=...`` words
    masked."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, redact_url(secret))
    return _KEY_VALUE.sub(lambda m: f"{m.group(1)}={MASK}", text)
