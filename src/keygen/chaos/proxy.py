"""An asyncio TCP proxy on 127.0.0.1 that a nemesis can tell to misbehave.

``FaultProxy(target_port)`` listens on a free port of its own and forwards every connection
to ``127.0.0.1:target_port``. Its mode decides what happens to traffic, to connections that
exist and to new ones:

    pass     forward both ways (the default)
    drop     a blackhole: bytes are read and thrown away, nothing is forwarded and nothing
             is closed, so a client waits until its own timeout; new connections are
             accepted and held the same way (the target never hears of them)
    reset    every open connection is reset (RST, SO_LINGER 0), and each new one is reset as
             soon as it is accepted
    delay    forward, each chunk held back ``delay`` seconds first (in order)

:class:`ProxyServer` runs any number of them in a child process of their own, on uvloop, so
that the load generator (busy in the parent) cannot slow the traffic they carry; its methods
may be called from any thread. :class:`FaultProxy` alone runs on any asyncio loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import uvloop

__all__ = ["FaultProxy", "Mode", "ProxyHandle", "ProxyServer"]

HOST = "127.0.0.1"
CHUNK = 65536


class Mode(StrEnum):
    """What a proxy does with traffic (see the module docstring)."""

    PASS = "pass"
    DROP = "drop"
    RESET = "reset"
    DELAY = "delay"


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST instead of a FIN: the peer sees 'connection reset'."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)
class _Link:
    """One proxied connection: the client's side and the target's side."""

    client: asyncio.StreamWriter
    target: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def reset(self) -> None:
        _reset(self.client)
        if self.target is not None:
            _reset(self.target)
        for task in self.tasks:
            task.cancel()


class FaultProxy:
    """One listening port forwarding to ``target_port``; runs on the loop that starts it.

    Args:
        target_port: the port on 127.0.0.1 to forward to.
        name: how reports call it.
        port: the port to listen on (0: a free one).
    """

    def __init__(self, target_port: int, *, name: str = "proxy", port: int = 0) -> None:
        self.target_port = target_port
        self.name = name
        self.port = port
        self.mode = Mode.PASS
        self.delay = 0.0
        self.connections = 0  # accepted so far
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None
        self._healed = asyncio.Event()  # set whenever the mode is not drop
        self._healed.set()

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, HOST, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.reset()
        self._links.clear()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def set_mode(self, mode: Mode | str, delay: float = 0.0) -> None:
        """Switch mode; ``reset`` resets every open connection now."""
        self.mode = Mode(mode)
        self.delay = delay
        if self.mode is Mode.DROP:
            self._healed.clear()
        else:
            self._healed.set()
        if self.mode is Mode.RESET:
            for link in list(self._links):
                link.reset()
            self._links.clear()

    def _mode(self) -> Mode:
        return self.mode

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode is Mode.RESET:
            _reset(writer)
            return
        link = _Link(writer)
        self._links.add(link)
        try:
            if self.mode is Mode.DROP:
                # Held like any connection: it forwards nothing until the mode changes, and
                # then it connects onwards (a blackhole that heals keeps its connections).
                await self._swallow_while_dropping(reader)
                if self._mode() is Mode.RESET:  # switched while it was held
                    raise ConnectionResetError(self.name)
            target_reader, target_writer = await asyncio.open_connection(HOST, self.target_port)
        except (OSError, asyncio.IncompleteReadError):
            _reset(writer)
            self._links.discard(link)
            return
        link.target = target_writer
        link.tasks = [
            asyncio.create_task(self._pipe(reader, target_writer, link)),
            asyncio.create_task(self._pipe(target_reader, writer, link)),
        ]
        try:
            await asyncio.gather(*link.tasks, return_exceptions=True)
        finally:
            self._links.discard(link)
            for side in (writer, target_writer):
                side.transport.abort()

    async def _swallow_while_dropping(self, reader: asyncio.StreamReader) -> None:
        """Read and discard until the mode changes (or the client goes away: EOF raises)."""

        async def swallow() -> None:
            while await reader.read(CHUNK):
                pass

        reading = asyncio.ensure_future(swallow())
        healed = asyncio.ensure_future(self._healed.wait())
        try:
            await asyncio.wait({reading, healed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            reading.cancel()
            healed.cancel()
        if not self._healed.is_set():
            raise asyncio.IncompleteReadError(b"", None)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        try:
            while data := await reader.read(CHUNK):
                if self.mode is Mode.DROP:
                    continue  # read and thrown away: the peer hears nothing
                if self.mode is Mode.DELAY and self.delay > 0:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
        except OSError:
            link.reset()  # one side reset: so is the other
            return
        if self.mode is not Mode.DROP:  # a half-close travels on, as TCP's would
            with contextlib.suppress(OSError, RuntimeError):
                writer.write_eof()


@dataclass(frozen=True)
class ProxyHandle:
    """A proxy running in the proxy process: where it listens and what it forwards to."""

    name: str
    port: int
    target_port: int

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"


class ProxyServer:
    """Proxies in a child process of their own (``python -m keygen.chaos.proxy``), on uvloop,
    so that neither the load generator's CPU nor its GIL slows the traffic they carry.

    It is driven by JSON lines on its stdin (one answer line per command on its stdout) and
    exits when its stdin closes, so it never outlives the run. Every method is thread-safe.
    """

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "keygen.chaos.proxy"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._lock = threading.Lock()
        self.proxies: dict[str, ProxyHandle] = {}

    def _call(self, command: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if (
                self._proc.poll() is not None
                or self._proc.stdin is None
                or self._proc.stdout is None
            ):
                raise OSError("the proxy process is not running")
            self._proc.stdin.write(json.dumps(command) + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        if not line:
            raise OSError("the proxy process exited")
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise OSError(f"proxy process: {answer.get('error')}")
        return answer

    def add(self, name: str, target_port: int, port: int = 0) -> ProxyHandle:
        """Start a proxy to ``127.0.0.1:target_port`` and return it (its port is set)."""
        answer = self._call({"op": "add", "name": name, "target": target_port, "port": port})
        handle = ProxyHandle(name, int(answer["port"]), target_port)
        self.proxies[name] = handle
        return handle

    def set_mode(self, names: list[str] | str, mode: Mode | str, delay: float = 0.0) -> None:
        """Switch the named proxies' mode, all in one step of their loop."""
        chosen = [names] if isinstance(names, str) else list(names)
        self._call({"op": "mode", "names": chosen, "mode": Mode(mode).value, "delay": delay})

    def close(self) -> None:
        """Stop every proxy and the process."""
        if self._proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self._call({"op": "close"})
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        for pipe in (self._proc.stdin, self._proc.stdout):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> ProxyServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


async def _serve_commands() -> None:
    """The proxy process: run proxies as stdin's JSON-line commands say."""
    loop = asyncio.get_running_loop()
    proxies: dict[str, FaultProxy] = {}
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        answer: dict[str, Any] = {"ok": True}
        try:
            command = json.loads(line)
            if command["op"] == "add":
                proxy = await FaultProxy(
                    command["target"], name=command["name"], port=command.get("port", 0)
                ).start()
                proxies[proxy.name] = proxy
                answer["port"] = proxy.port
            elif command["op"] == "mode":
                for name in command["names"]:
                    proxies[name].set_mode(command["mode"], float(command.get("delay", 0)))
            elif command["op"] == "close":
                break
            else:
                raise ValueError(f"unknown op {command['op']!r}")
        except (OSError, ValueError, KeyError) as exc:
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    await asyncio.gather(*(p.aclose() for p in proxies.values()))
    sys.stdout.write(json.dumps({"ok": True}) + "\n")
    sys.stdout.flush()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner decides when we stop
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve_commands())


if __name__ == "__main__":
    main()
