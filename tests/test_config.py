"""Settings come from the original description's names and KEYGEN_*; bad values are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from keygen.config import Settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing set: embedded ledger in ./.keygen, no Redis, the original's defaults."""
    for name in (
        "ID_BLOCK_SIZE",
        "REDIS_SENTINEL_HOSTS",
        "KEYGEN_DATABASE_URL",
        "KEYGEN_DATA_DIR",
        "ALLOCATION_TIMEOUT",
    ):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(_env_file=None)
    assert settings.id_block_size == 1000
    assert settings.allocation_timeout == 30
    assert settings.lock_timeout == 10
    assert settings.redis_sentinel_hosts is None and settings.sentinels == []
    assert settings.database_url is None
    assert settings.data_dir == Path(".keygen")
    assert settings.max_block_size == 1_000_000


def test_original_names_and_prefixed_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """The original description's names are read unprefixed, Keygen's own with KEYGEN_."""
    monkeypatch.setenv("ID_BLOCK_SIZE", "50")
    monkeypatch.setenv("ALLOCATION_TIMEOUT", "2.5")
    monkeypatch.setenv("REDIS_SENTINEL_HOSTS", "a:26379, b:26380")
    monkeypatch.setenv("KEYGEN_DATA_DIR", "/tmp/x")
    monkeypatch.setenv("KEYGEN_MAX_BLOCK_SIZE", "99")
    settings = Settings(_env_file=None)
    assert settings.id_block_size == 50
    assert settings.allocation_timeout == 2.5
    assert settings.sentinels == [("a", 26379), ("b", 26380)]
    assert settings.data_dir == Path("/tmp/x")
    assert settings.max_block_size == 99


def test_blank_urls_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty KEYGEN_DATABASE_URL or REDIS_SENTINEL_HOSTS means the layer is off."""
    monkeypatch.setenv("KEYGEN_DATABASE_URL", " ")
    monkeypatch.setenv("REDIS_SENTINEL_HOSTS", "")
    settings = Settings(_env_file=None)
    assert settings.database_url is None and settings.redis_sentinel_hosts is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ID_BLOCK_SIZE", "0"),
        ("ID_BLOCK_SIZE", "ten"),
        ("ALLOCATION_TIMEOUT", "-1"),
        ("KEYGEN_LEASE_SIZE", "0"),
    ],
)
def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    """Out-of-range or non-numeric settings fail validation at start-up."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings(_env_file=None)
