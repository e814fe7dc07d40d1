"""Value types for the command lines' options, shared by every ``keygen`` command."""

from __future__ import annotations

import argparse
from urllib.parse import urlsplit

from keygen.constants import DEFAULT_HOST, DEFAULT_PORT

__all__ = ["instance_url", "positive_int"]


def positive_int(text: str) -> int:
    """A whole number of at least 1, or argparse's error saying what is wrong with ``text``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def instance_url(value: str) -> str:
    """An instance's base URL (``--url``), without a trailing ``/``: ``host:port`` stands for
    ``http://host:port``; anything but an http(s) URL with a host and a numeric port (if any)
    is argparse's error."""
    text = value.strip()
    if "://" not in text:
        text = f"http://{text}"
    text = text.rstrip("/")
    parts = urlsplit(text)
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        parts = parts._replace(netloc="")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an instance's URL (such as {DEFAULT_HOST}:{DEFAULT_PORT} or "
            f"http://{DEFAULT_HOST}:{DEFAULT_PORT})"
        )
    return text
