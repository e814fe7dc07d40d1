"""KEYGEN_REDIS_ADDRESS_MAP: the master Sentinel names is reached through its mapped address."""

from __future__ import annotations

from pathlib import Path

import pytest

from keygen.config import Settings, parse_address_map
from keygen.dispensers.sentinel import MappedSentinel, redis_link, sentinel_link

pytestmark = pytest.mark.anyio


def test_parse_address_map() -> None:
    """host:port=host:port pairs parse; blanks are skipped; anything else is refused."""
    assert parse_address_map(" 127.0.0.1:6379=127.0.0.1:7000, ,10.0.0.1:6380=h:1 ") == {
        ("127.0.0.1", 6379): ("127.0.0.1", 7000),
        ("10.0.0.1", 6380): ("h", 1),
    }
    assert parse_address_map(None) == {}
    for bad in ("127.0.0.1:6379", "127.0.0.1:x=a:1", "=a:1"):
        with pytest.raises(ValueError):
            parse_address_map(bad)


def test_settings_validate_the_map(tmp_path: Path) -> None:
    """The setting is checked when the settings are read."""
    settings = Settings(
        _env_file=None, data_dir=tmp_path, redis_address_map="127.0.0.1:1=127.0.0.1:2"
    )
    assert settings.redis_addresses == {("127.0.0.1", 1): ("127.0.0.1", 2)}
    with pytest.raises(ValueError):
        Settings(_env_file=None, data_dir=tmp_path, redis_address_map="nonsense")


async def test_discovered_master_goes_through_the_map(monkeypatch: pytest.MonkeyPatch) -> None:
    """The address Sentinel names is translated; an unmapped one is used as is."""
    answers = iter([("127.0.0.1", 6379), ("127.0.0.1", 6380)])

    async def discover(self: object, service_name: str) -> tuple[str, int]:
        return next(answers)

    monkeypatch.setattr("redis.asyncio.sentinel.Sentinel.discover_master", discover)
    sentinel = MappedSentinel(
        [("127.0.0.1", 1)], address_map={("127.0.0.1", 6379): ("127.0.0.1", 7000)}
    )
    assert await sentinel.discover_master("mymaster") == ("127.0.0.1", 7000)
    assert await sentinel.discover_master("mymaster") == ("127.0.0.1", 6380)
    await sentinel.aclose()


def test_links_carry_the_credentials_and_verify_tls() -> None:
    """Every Redis and Sentinel connection is built from one place: the ACL user and
    password of its kind and, with TLS, the certificate and host name always checked."""
    settings = Settings(
        redis_sentinel_hosts="127.0.0.1:26379",
        redis_username="keygen",
        redis_password="data-secret",
        redis_tls=True,
        redis_ssl_ca_certs=Path("/etc/keygen/ca.crt"),
        redis_sentinel_username="watcher",
        redis_sentinel_password="sentinel-secret",
    )
    assert redis_link(settings) == {
        "username": "keygen",
        "password": "data-secret",
        "ssl": True,
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": "/etc/keygen/ca.crt",
        "ssl_certfile": None,
        "ssl_keyfile": None,
    }
    assert sentinel_link(settings) == {"username": "watcher", "password": "sentinel-secret"}
    assert redis_link(Settings()) == {} and sentinel_link(Settings()) == {}
    assert "data-secret" not in repr(settings) and "sentinel-secret" not in repr(settings)
