"""Process plumbing for the launcher: free ports, ``/proc`` inspection, waiting.

Everything the launcher signals is first identified through ``/proc/<pid>``: its start time
(so that a recycled pid is never mistaken for ours) and its command line.
"""

from __future__ import annotations

import os
import random
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from pathlib import Path

from keygen.errors import ClusterError

#: How often the wait loops look again.
POLL_INTERVAL = 0.05


#: Where free ports are looked for: below the kernel's ephemeral range, so that the source
#: port of some outgoing connection (a replica's link, a Sentinel's probes) cannot take a port
#: between the moment we pick it and the moment a server binds it.
FREE_PORT_LOW = 10000


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports on 127.0.0.1 that nothing uses now, picked at random below the
    ephemeral range (or from the kernel, if that range leaves no room)."""
    high = _ephemeral_low()
    if high - FREE_PORT_LOW < 1000:
        with ExitStack() as stack:
            socks = [stack.enter_context(socket.socket()) for _ in range(count)]
            for sock in socks:
                sock.bind(("127.0.0.1", 0))
            return [int(sock.getsockname()[1]) for sock in socks]
    rng = random.SystemRandom()
    ports: list[int] = []
    while len(ports) < count:
        port = rng.randrange(FREE_PORT_LOW, high)
        if port not in ports and not port_in_use(port):
            ports.append(port)
    return ports


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something already listens on ``host:port`` (or the port cannot be bound)."""
    with socket.socket() as sock:
        # As the servers do: a closed connection lingering in TIME_WAIT does not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` from field 3 (state) on; the command name may hold spaces."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    return text.rsplit(")", 1)[-1].split()


def process_state(pid: int) -> str | None:
    """The kernel's one-letter state (``R``, ``S``, ``T`` stopped, ``Z`` zombie), or None."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot: with the pid, a unique identity."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def cmdline(pid: int) -> list[str]:
    """The argument vector of ``pid`` (empty if it is gone or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not count)."""
    state = process_state(pid)
    return state is not None and state not in ("Z", "X")


def exists(pid: int) -> bool:
    """Whether ``pid`` exists at all, zombies included (PostgreSQL's lock-file test)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def children(pid: int) -> list[int]:
    """The direct children of ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(stat.parent.name))
    return found


def signal_pids(pids: Iterable[int], sig: int) -> None:
    """Send ``sig`` to each pid that still exists."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def pause_pids(pids: Iterable[int], timeout: float = 5.0) -> None:
    """SIGSTOP each pid, and return once the kernel shows each stopped (or gone): the signal
    is delivered when the process is next scheduled, which on a busy machine is not at once."""
    pids = list(pids)
    signal_pids(pids, signal.SIGSTOP)
    wait_until(
        lambda: all(process_state(pid) in ("T", "t", "Z", None) for pid in pids),
        timeout,
        f"processes {pids} to stop",
        interval=0.01,
    )


def wait_until(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    detail: Callable[[], str] | None = None,
    *,
    interval: float = POLL_INTERVAL,
) -> None:
    """Poll ``condition`` every ``interval`` seconds until it holds; raise ``ClusterError``
    naming ``what`` after ``timeout`` seconds (with ``detail()`` appended, e.g. a log tail)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            extra = f"\n{detail()}" if detail else ""
            raise ClusterError(f"timed out after {timeout:g}s waiting for {what}{extra}")
        time.sleep(interval)


def wait_gone(pids: Sequence[int], timeout: float, *, zombies_count: bool = False) -> None:
    """Wait until none of ``pids`` runs; with ``zombies_count``, until they are reaped too."""
    alive = exists if zombies_count else is_alive
    wait_until(
        lambda: not any(alive(pid) for pid in pids), timeout, f"processes {list(pids)} to exit"
    )


def as_user(argv: Sequence[str], user: str | None) -> list[str]:
    """``argv`` run as ``user`` through ``runuser`` (we are root), or as is."""
    return ["runuser", "-u", user, "--", *argv] if user else list(argv)


def spawn(
    argv: Sequence[str], *, cwd: Path, console_log: Path, umask: int = -1
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session, so that it outlives the command that started it
    and a Ctrl-C in that terminal does not reach it. Output goes to ``console_log``;
    ``umask`` (unless -1, ours) is the one it creates files with."""
    with console_log.open("ab") as out:
        out.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(argv)}\n".encode())
        out.flush()
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            umask=umask,
        )


def tail(path: Path, chars: int = 3000) -> str:
    """The end of a log file, or an empty string."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - chars))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""
