"""The option types every ``keygen`` command shares."""

from __future__ import annotations

import argparse

import pytest

from keygen.arguments import instance_url
from keygen.cli import build_parser


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("127.0.0.1:8010", "http://127.0.0.1:8010"),
        ("localhost", "http://localhost"),
        (" http://127.0.0.1:8010/ ", "http://127.0.0.1:8010"),
        ("https://keygen.internal:8443", "https://keygen.internal:8443"),
        ("[::1]:8010", "http://[::1]:8010"),
    ],
)
def test_an_instance_url_assumes_http_without_a_scheme(given: str, url: str) -> None:
    """``host:port`` stands for ``http://host:port``; a URL keeps its scheme, loses its ``/``."""
    assert instance_url(given) == url


@pytest.mark.parametrize("given", ["ftp://127.0.0.1:21", "127.0.0.1:port", "http://", ""])
def test_what_is_not_an_instance_url_is_refused(given: str) -> None:
    """A scheme other than http(s), a port that is not a number or no host is refused."""
    with pytest.raises(argparse.ArgumentTypeError, match="is not an instance's URL"):
        instance_url(given)


@pytest.mark.parametrize("given", ["127.0.0.1:8010", "https://127.0.0.1:8443/"])
def test_allocate_and_monitor_read_url_alike(given: str) -> None:
    """`keygen allocate --url` and `keygen monitor --url` parse the same text to one URL."""
    parser = build_parser()
    allocate = parser.parse_args(["allocate", "--url", given])
    monitor = parser.parse_args(["monitor", "--url", given])
    assert allocate.url == monitor.url[0] == instance_url(given)
