"""A fault-injecting TCP proxy on loopback, for network scenarios between a board and a server.

Bytes pass through unchanged (TLS end to end: the proxy sees only ciphertext) until the rig
injects a fault:

* `cut(seconds)`: every open connection is reset (RST, as when a router drops the session) and
  the listening socket is closed, so new connections are refused until the cut ends (after
  `seconds`, or at `restore()` when `seconds` is None). The port is bound again afterwards.
* `flap(down_s, up_s, cycles)`: cut and restore on a schedule, in the background.

The proxy runs its own asyncio loop in a daemon thread, so synchronous tests drive it; every
fault is a timed rig step (hil.steps), and `events` keeps what happened with loopback times.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from hil import steps

_CHUNK = 65536


class ProxyError(RuntimeError):
    """The proxy could not do what the rig asked (bind, restore); the message says why."""


@dataclass
class ProxyStats:
    accepted: int = 0
    upstream_failed: int = 0
    reset: int = 0
    cuts: int = 0
    bytes_up: int = 0  # client -> upstream
    bytes_down: int = 0  # upstream -> client
    events: list[tuple[float, str]] = field(default_factory=list)


class FaultProxy:
    """Listens on `listen_host:port` (0: an ephemeral port, kept across cuts) and forwards each
    connection to `upstream`."""

    def __init__(
        self, upstream: tuple[str, int], listen_host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.upstream = upstream
        self.listen_host = listen_host
        self.port = port
        self.stats = ProxyStats()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._restore_at: asyncio.TimerHandle | None = None
        self._flapper: asyncio.Task[None] | None = None
        self._t0 = time.monotonic()

    # -- life ---------------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        self._event(f"listening on {self.listen_host}:{self.port} -> {self.upstream}")
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(ProxyError):
            self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def up(self) -> bool:
        return self._server is not None

    # -- faults -------------------------------------------------------------------------------
    def cut(self, seconds: float | None = None) -> None:
        """Reset every connection and refuse new ones; back after `seconds` (None: restore())."""
        with steps.step("net_cut", port=self.port, seconds=seconds):
            self._call(self._cut(seconds))

    def restore(self) -> None:
        with steps.step("net_restore", port=self.port):
            self._call(self._restore())

    def flap(self, down_s: float, up_s: float, cycles: int) -> None:
        """Start cutting for `down_s` then passing for `up_s`, `cycles` times, in the background;
        `wait_flapping()` returns when the schedule is done."""
        if down_s <= 0 or up_s < 0 or cycles < 1:
            raise ValueError("flap needs down_s > 0, up_s >= 0 and cycles >= 1")
        with steps.step("net_flap", port=self.port, down_s=down_s, up_s=up_s, cycles=cycles):
            self._call(self._start_flap(down_s, up_s, cycles))

    def wait_flapping(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._flapper is not None and not self._flapper.done():
            if time.monotonic() > deadline:
                raise ProxyError(f"flapping did not finish within {timeout:.0f} s")
            time.sleep(0.05)

    def events(self) -> list[tuple[float, str]]:
        return list(self.stats.events)

    # -- inside the loop ------------------------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, None], timeout: float = 10.0) -> None:
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            fut.result(timeout)
        except OSError as e:
            raise ProxyError(
                f"fault proxy on {self.listen_host}:{self.port}: {e}; is the port taken?"
            ) from e

    def _event(self, what: str) -> None:
        self.stats.events.append((round(time.monotonic() - self._t0, 3), what))

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.listen_host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _cut(self, seconds: float | None) -> None:
        if self._restore_at is not None:
            self._restore_at.cancel()
            self._restore_at = None
        if self._server is not None:
            self._server.close()
            self._server = None
            self.stats.cuts += 1
        for w in list(self._conns):
            _reset(w)
            self.stats.reset += 1
        self._conns.clear()
        self._event(f"cut for {seconds} s" if seconds is not None else "cut")
        if seconds is not None:
            self._restore_at = self._loop.call_later(
                seconds, lambda: self._loop.create_task(self._restore())
            )

    async def _restore(self) -> None:
        self._restore_at = None
        if self._server is None:
            await self._listen()
            self._event("restored")

    async def _start_flap(self, down_s: float, up_s: float, cycles: int) -> None:
        async def run() -> None:
            for _ in range(cycles):
                await self._cut(None)
                await asyncio.sleep(down_s)
                await self._restore()
                await asyncio.sleep(up_s)

        self._flapper = self._loop.create_task(run())

    async def _shutdown(self) -> None:
        if self._flapper is not None:
            self._flapper.cancel()
        if self._restore_at is not None:
            self._restore_at.cancel()
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._conns):
            _reset(w)
        self._conns.clear()
        # Let the aborted transports and pumps finish before the loop stops.
        await asyncio.sleep(0.05)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            # Upstream down too: the client sees the connection close, as through a NAT.
            self.stats.upstream_failed += 1
            _reset(writer)
            writer.close()
            return
        self._conns.update((writer, up_writer))
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, "bytes_up"),
                self._pump(up_reader, writer, "bytes_down"),
            )
        finally:
            for w in (writer, up_writer):
                self._conns.discard(w)
                w.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counter: str
    ) -> None:
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    break
                setattr(self.stats, counter, getattr(self.stats, counter) + len(data))
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if not writer.is_closing():
                # Half-close like TCP: the other direction may still carry data.
                with contextlib.suppress(OSError, RuntimeError):
                    if writer.can_write_eof():
                        writer.write_eof()


def _reset(writer: asyncio.StreamWriter) -> None:
    # SO_LINGER with a zero time-out makes close() send RST instead of FIN (a dropped session,
    # not a polite goodbye): the peer's next read or write fails at once.
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


__all__ = ["FaultProxy", "ProxyError", "ProxyStats"]
