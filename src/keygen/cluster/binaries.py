"""Finding the server binaries, and installing them with apt-get when they are missing.

``redis-server`` runs both the data nodes and, with ``--sentinel``, the Sentinels, so the
separate ``redis-sentinel`` package is never needed. PostgreSQL's server programs are not on
Debian's PATH: they live in ``/usr/lib/postgresql/<major>/bin``.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from pathlib import Path

from keygen.errors import ClusterError
from keygen.progress import Progress

#: Debian packages providing each program.
REDIS_PACKAGE = "redis-server"
POSTGRES_PACKAGE = "postgresql"


def find_redis_server() -> Path | None:
    """``redis-server`` on PATH, or None."""
    found = shutil.which("redis-server")
    return Path(found) if found else None


def find_postgres_bin_dir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: on PATH, else the newest Debian one."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(os.path.realpath(found)).parent

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path))

    for path in sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=version, reverse=True):
        if Path(path).with_name("initdb").exists():
            return Path(path).parent
    return None


def apt_install(packages: list[str], progress: Progress) -> None:
    """``apt-get update`` then ``apt-get install -y PACKAGES``, as root; else a clear error."""
    wanted = " ".join(packages)
    if os.geteuid() != 0:
        raise ClusterError(
            f"{wanted} is not installed and installing it needs root: "
            f"run `sudo apt-get install -y {wanted}` (or scripts/apt-install {wanted})"
        )
    if shutil.which("apt-get") is None:
        raise ClusterError(f"{wanted} is not installed and there is no apt-get to install it")
    progress(f"installing {wanted} with apt-get (one time; this can take a minute)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
    ):
        result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ClusterError(
                f"`{' '.join(argv)}` failed ({result.returncode}):\n"
                f"{(result.stdout + result.stderr)[-2000:]}"
            )


def ensure_redis_server(progress: Progress) -> Path:
    """The path of ``redis-server``, installing the Debian package first if it is missing."""
    found = find_redis_server()
    if found is None:
        apt_install([REDIS_PACKAGE], progress)
        found = find_redis_server()
    if found is None:
        raise ClusterError(f"apt-get installed {REDIS_PACKAGE} but redis-server is not on PATH")
    return found


def ensure_postgres_bin_dir(progress: Progress) -> Path:
    """The directory of ``initdb``/``pg_ctl``, installing PostgreSQL first if it is missing.

    Debian's package also creates and starts a system cluster on 5432; we never touch it.
    """
    found = find_postgres_bin_dir()
    if found is None:
        apt_install([POSTGRES_PACKAGE], progress)
        found = find_postgres_bin_dir()
    if found is None:
        raise ClusterError(f"apt-get installed {POSTGRES_PACKAGE} but initdb/pg_ctl are missing")
    return found
