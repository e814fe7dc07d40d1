"""A secure topology (``keygen cluster up --secure``): TLS on every link, an ACL user for each
party, passwords generated once and kept in the cluster's directory::

    tls/               the CA, the server and the client certificates (keygen.cluster.certs)
    credentials.json   every generated password (0600)

Who connects to what, as whom (each one also shows a certificate signed by the CA, since
every server asks for one):

    =============  =======================================  =============================
    who            data nodes (Redis)                       Sentinels
    =============  =======================================  =============================
    Keygen         ``keygen``: its commands on ``keygen:*``  ``keygen``: discovery, health,
                                                            ``+switch-master``
    replicas       ``replication``: PSYNC, REPLCONF, PING
    Sentinels      ``sentinel``: the set Redis documents    ``admin`` (the peer links)
    the launcher   ``admin``: everything                    ``admin``
    =============  =======================================  =============================

``default`` is off on every node, so a client that does not authenticate can run nothing.
PostgreSQL has the superuser ``postgres`` (the launcher) and the role ``keygen``, which owns
the ``keygen`` database; see :mod:`keygen.cluster.postgres`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import secrets
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from keygen.cluster.certs import Certificates, make_certificates
from keygen.errors import ClusterError

__all__ = [
    "ADMIN_USER",
    "CREDENTIALS_FILE",
    "KEYGEN_DATA_COMMANDS",
    "KEYGEN_SENTINEL_COMMANDS",
    "KEYGEN_USER",
    "Credentials",
    "Security",
]

CREDENTIALS_FILE = "credentials.json"
TLS_DIR = "tls"
#: The user Keygen connects as, on the data nodes, the Sentinels and PostgreSQL.
KEYGEN_USER = "keygen"
#: The launcher's own user (readiness, status, failovers, faults), and the Sentinels' peers.
ADMIN_USER = "admin"
REPLICATION_USER = "replication"
SENTINEL_USER = "sentinel"

#: What Keygen runs on a data node, and nothing else: the function library (FCALL; FUNCTION
#: LIST, to see that the library is there, and for ``keygen config check``; never FUNCTION
#: LOAD or DELETE: ``admin`` installs the library, so the service's password cannot replace
#: what every instance runs) and, because ACLs apply inside functions
#: too, what its functions call (INFO for the fence's identity, the lease hash's HMGET,
#: HINCRBY, HSET, the refill lock's GET, SET, DEL); ROLE and PING for the health probe;
#: INCRBY and EXPIRE for the rate limits' shared counters; LASTSAVE, BGSAVE, SCAN and
#: HGETALL for ``keygen backup``. A command Keygen starts to use must be added here (the
#: secure topology's tests fail on any command refused to ``keygen``).
KEYGEN_DATA_COMMANDS = (
    "fcall",
    "fcall_ro",
    "function|list",
    "info",
    "hmget",
    "hincrby",
    "hset",
    "hgetall",
    "get",
    "set",
    "del",
    "incrby",
    "expire",
    "role",
    "ping",
    "lastsave",
    "bgsave",
    "scan",
)
#: What Keygen asks a Sentinel: the master and its replicas (discovery), the master's state
#: and the quorum (health, ``keygen config check``), ``+switch-master`` announcements.
KEYGEN_SENTINEL_COMMANDS = (
    "sentinel|masters",
    "sentinel|master",
    "sentinel|slaves",
    "sentinel|replicas",
    "sentinel|get-master-addr-by-name",
    "sentinel|ckquorum",
    "subscribe",
    "unsubscribe",
    "ping",
)
#: What a Sentinel runs on the data nodes it watches (the set the Redis docs give).
SENTINEL_DATA_COMMANDS = (
    "multi",
    "exec",
    "slaveof",
    "ping",
    "subscribe",
    "publish",
    "config|rewrite",
    "role",
    "info",
    "client|setname",
    "client|kill",
    "script|kill",
)
#: What a replica runs on its master.
REPLICATION_COMMANDS = ("psync", "sync", "replconf", "ping")


@dataclass(frozen=True)
class Credentials:
    """Every password of a secure topology, generated once."""

    redis_admin: str
    redis_keygen: str
    redis_replication: str
    redis_sentinel: str
    sentinel_admin: str
    sentinel_keygen: str
    postgres_admin: str
    postgres_keygen: str

    @classmethod
    def generate(cls) -> Credentials:
        # URL-safe: they go into redis.conf, a PostgreSQL URL and SQL literals unquoted.
        return cls(*(secrets.token_urlsafe(24) for _ in fields(cls)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<{len(fields(self))} passwords>)"


def _hashed(password: str) -> str:
    """An ACL password as its SHA-256, so that the file does not hold it in clear."""
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def _user(name: str, password: str, *rules: str) -> str:
    return " ".join(["user", name, "on", _hashed(password), *rules])


def _allowed(commands: tuple[str, ...]) -> list[str]:
    return ["-@all", *(f"+{command}" for command in commands)]


class Security:
    """The certificates and passwords of the secure topology in ``directory``, made on
    first use and kept there."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory).absolute()
        self.credentials_path = self.directory / CREDENTIALS_FILE

    @functools.cached_property
    def certs(self) -> Certificates:
        """The topology's certificates (``tls/``), made when missing."""
        return make_certificates(self.directory / TLS_DIR)

    @functools.cached_property
    def credentials(self) -> Credentials:
        """The passwords (``credentials.json``), generated and written 0600 when missing."""
        try:
            data = json.loads(self.credentials_path.read_text())
            return Credentials(**data)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError) as exc:
            raise ClusterError(f"cannot read {self.credentials_path}: {exc}") from exc
        credentials = Credentials.generate()
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.credentials_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(asdict(credentials), indent=2) + "\n")
        os.replace(tmp, self.credentials_path)
        return credentials

    # -- Redis and Sentinel configuration -------------------------------------------------

    def tls_lines(self) -> list[str]:
        """TLS only (``port 0``), on the listening port and on every outgoing link
        (replication, Sentinel to node and to Sentinel); every client shows a certificate."""
        certs = self.certs
        return [
            f'tls-cert-file "{certs.server_cert}"',
            f'tls-key-file "{certs.server_key}"',
            f'tls-ca-cert-file "{certs.ca}"',
            "tls-auth-clients yes",
            "tls-replication yes",
        ]

    def data_node_lines(self) -> list[str]:
        """A data node's ACL users, and how it authenticates to its master as a replica."""
        c = self.credentials
        return [
            "user default off",
            _user(ADMIN_USER, c.redis_admin, "~*", "&*", "+@all"),
            _user(KEYGEN_USER, c.redis_keygen, "~keygen:*", "resetchannels",
                  *_allowed(KEYGEN_DATA_COMMANDS)),
            _user(REPLICATION_USER, c.redis_replication, "resetkeys", "resetchannels",
                  *_allowed(REPLICATION_COMMANDS)),
            _user(SENTINEL_USER, c.redis_sentinel, "resetkeys", "allchannels",
                  *_allowed(SENTINEL_DATA_COMMANDS)),
            f"masteruser {REPLICATION_USER}",
            f"masterauth {c.redis_replication}",
        ]  # fmt: skip

    def sentinel_lines(self) -> list[str]:
        """A Sentinel's ACL users, and how it authenticates to the other Sentinels."""
        c = self.credentials
        return [
            "user default off",
            _user(ADMIN_USER, c.sentinel_admin, "~*", "&*", "+@all"),
            _user(KEYGEN_USER, c.sentinel_keygen, "resetkeys", "resetchannels",
                  "&+switch-master", *_allowed(KEYGEN_SENTINEL_COMMANDS)),
            f"sentinel sentinel-user {ADMIN_USER}",
            f"sentinel sentinel-pass {c.sentinel_admin}",
        ]  # fmt: skip

    def monitor_lines(self, master_name: str) -> list[str]:
        """How a Sentinel authenticates to the data nodes of ``master_name``."""
        return [
            f"sentinel auth-user {master_name} {SENTINEL_USER}",
            f"sentinel auth-pass {master_name} {self.credentials.redis_sentinel}",
        ]

    def client_options(self, *, sentinel: bool) -> dict[str, Any]:
        """redis-py arguments for the launcher's own connections (as ``admin``)."""
        certs = self.certs
        c = self.credentials
        return {
            "username": ADMIN_USER,
            "password": c.sentinel_admin if sentinel else c.redis_admin,
            "ssl": True,
            "ssl_cert_reqs": "required",
            "ssl_check_hostname": True,
            "ssl_ca_certs": str(certs.ca),
            "ssl_certfile": str(certs.client_cert),
            "ssl_keyfile": str(certs.client_key),
        }

    def keygen_env(self) -> dict[str, str]:
        """The ``KEYGEN_REDIS_*`` settings that connect Keygen as ``keygen``."""
        certs = self.certs
        c = self.credentials
        return {
            "KEYGEN_REDIS_USERNAME": KEYGEN_USER,
            "KEYGEN_REDIS_PASSWORD": c.redis_keygen,
            "KEYGEN_REDIS_TLS": "true",
            "KEYGEN_REDIS_SSL_CA_CERTS": str(certs.ca),
            "KEYGEN_REDIS_SSL_CERTFILE": str(certs.client_cert),
            "KEYGEN_REDIS_SSL_KEYFILE": str(certs.client_key),
            "KEYGEN_REDIS_SENTINEL_USERNAME": KEYGEN_USER,
            "KEYGEN_REDIS_SENTINEL_PASSWORD": c.sentinel_keygen,
            "KEYGEN_REDIS_SENTINEL_TLS": "true",
        }

    # -- PostgreSQL -----------------------------------------------------------------------

    def libpq_params(self) -> dict[str, str]:
        """The TLS part of a PostgreSQL URL: the server verified (CA and host name), the
        client certificate shown."""
        certs = self.certs
        return {
            "sslmode": "verify-full",
            "sslrootcert": str(certs.ca),
            "sslcert": str(certs.client_cert),
            "sslkey": str(certs.client_key),
        }
