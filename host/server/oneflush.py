"""uvicorn's HTTP protocol with the writes of one event-loop turn sent as one.

An ASGI answer is two messages, and uvicorn writes each as it comes: the head, then the body.
Over TLS each write is its own record and its own `send()`, and with TCP_NODELAY its own
segment: the client wakes for the head, then again for the body, and a board's TLS stack
decrypts two records per answer. `OneFlushHttp` hands uvicorn a transport that holds the writes
made during one turn of the event loop and sends them together at its end, so the head and body
of an answer leave as one record (an onboarding costs the server 4 sends instead of 6).

Large writes (a file streamed to a client) go out at once, after what is held, in order.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_PASS_THROUGH = 64 * 1024  # bytes: a write this large is not copied into a joined one


class _HoldingTransport:
    """A transport that delays writes to the end of the loop's turn (see the module)."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if len(data) >= _PASS_THROUGH:
            self.flush()
            self._transport.write(data)
        elif self._held is None:
            self._held = [bytes(data)]
            self._loop.call_soon(self.flush)
        else:
            self._held.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        held, self._held = self._held, None
        if held and not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        held = sum(len(d) for d in self._held) if self._held else 0
        return held + self._transport.get_write_buffer_size()

    def __getattr__(self, name: str) -> Any:  # everything else is the transport's own
        return getattr(self._transport, name)


class OneFlushHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol over a `_HoldingTransport`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        super().connection_made(_HoldingTransport(transport, self.loop))  # type: ignore[arg-type]
