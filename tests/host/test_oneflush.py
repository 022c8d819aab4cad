"""The server's HTTP protocol sends an answer's head and body in one write (one TLS record, one
segment): the writes of one event-loop turn are held and joined; large ones pass, in order."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from host.server.oneflush import _PASS_THROUGH, OneFlushHttp, _HoldingTransport


class Recording(asyncio.Transport):
    """A transport that keeps what is written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8443)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _turn() -> None:
    """Let the loop finish its current turn (and run what that turn scheduled)."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def test_writes_of_one_turn_leave_as_one() -> None:
    async def main() -> None:
        inner = Recording()
        t = _HoldingTransport(inner, asyncio.get_running_loop())
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")
        t.write(bytearray(b"{}"))
        assert inner.writes == []  # held until the turn ends
        assert t.get_write_buffer_size() == 21
        await _turn()
        assert inner.writes == [b"HTTP/1.1 200 OK\r\n\r\n{}"]
        t.write(b"next")
        await _turn()
        assert inner.writes[1:] == [b"next"]

    asyncio.run(main())


def test_a_large_write_passes_after_what_is_held() -> None:
    async def main() -> None:
        inner = Recording()
        t = _HoldingTransport(inner, asyncio.get_running_loop())
        big = b"x" * _PASS_THROUGH
        t.write(b"head")
        t.write(big)
        assert inner.writes == [b"head", big]  # in order, the large one not copied into a join
        await _turn()
        assert inner.writes == [b"head", big]

    asyncio.run(main())


def test_close_sends_what_is_held_first_and_abort_drops_it() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        inner = Recording()
        t = _HoldingTransport(inner, loop)
        t.write(b"last words")
        t.close()
        assert inner.writes == [b"last words"] and inner.closed
        await _turn()
        assert inner.writes == [b"last words"]  # the scheduled flush finds nothing left

        other = Recording()
        t = _HoldingTransport(other, loop)
        t.write(b"never sent")
        t.abort()
        await _turn()
        assert other.writes == [] and other.aborted

    asyncio.run(main())


def test_nothing_is_written_to_a_closing_transport() -> None:
    async def main() -> None:
        inner = Recording()
        t = _HoldingTransport(inner, asyncio.get_running_loop())
        t.write(b"late")
        inner.closed = True  # the peer went away meanwhile
        await _turn()
        assert inner.writes == []

    asyncio.run(main())


def test_uvicorn_answers_head_and_body_in_one_write() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        head = [(b"content-length", b"12")]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        await send({"type": "http.response.body", "body": b'{"ok": true}'})

    async def main() -> list[bytes]:
        config = uvicorn.Config(app, http=OneFlushHttp, lifespan="off", log_config=None)
        config.load()
        protocol = OneFlushHttp(config=config, server_state=ServerState(), app_state={})
        inner = Recording()
        protocol.connection_made(inner)
        protocol.data_received(b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n{}")
        for _ in range(20):
            await asyncio.sleep(0)
        protocol.connection_lost(None)
        return inner.writes

    writes = asyncio.run(main())
    assert len(writes) == 1, writes
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert writes[0].endswith(b'\r\n\r\n{"ok": true}')
