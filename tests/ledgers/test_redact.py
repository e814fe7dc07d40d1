"""Credentials never reach health, logs, errors or the command line's output."""

from __future__ import annotations

import pytest

from keygen.config import Settings
from keygen.redact import redact_text, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@h/db", "postgresql://u:***@h/db"),
        (
            "postgresql://h/db?password=pw&sslmode=require",
            "postgresql://h/db?password=***&sslmode=require",
        ),
        ("postgresql://u@h/db?sslpassword=pw", "postgresql://u@h/db?sslpassword=***"),
        ("postgres://u:p%40w@h:5432/db?PASSWORD=x", "postgres://u:***@h:5432/db?PASSWORD=***"),
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://pw@h", "redis://***@h"),
        ("host=h password=pw dbname=d", "host=h password=*** dbname=d"),
        ("host=h password='p w' dbname=d", "host=h password=*** dbname=d"),
        ("postgresql://h/db", "postgresql://h/db"),
    ],
)
def test_every_credential_form_is_masked(url: str, shown: str) -> None:
    """Userinfo, password= and sslpassword= in queries, Redis URLs and libpq DSNs."""
    assert redact_url(url) == shown
    assert "pw" not in redact_url(url).replace("password", "")


def test_a_message_quoting_the_url_is_redacted() -> None:
    """A driver's message that quotes the URL shows it redacted."""
    url = "postgresql://u:pw@h/db?sslpassword=spw"
    text = redact_text(f"cannot connect to {url}", url)
    assert "pw@" not in text and "spw" not in text


def test_settings_repr_hides_the_database_url() -> None:
    """repr(Settings) (in a traceback, a log line) never shows the database URL."""
    settings = Settings(_env_file=None, database_url="postgresql://u:pw@h/db")
    assert "pw" not in repr(settings)
