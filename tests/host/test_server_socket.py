"""The API's listening socket: connections accepted from it get TCP_NODELAY from asyncio, so an
answer's head and body are not held apart by Nagle's algorithm waiting on a delayed ACK (which
cost every device request about 40 ms)."""

from __future__ import annotations

import asyncio
import socket

from host.server.app import _listen


def _nodelay_of_accepted(listener: socket.socket) -> int:
    async def main() -> int:
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def on_connect(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            sock = w.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            w.close()

        server = await asyncio.start_server(on_connect, sock=listener)
        port = listener.getsockname()[1]
        _r, w = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(accepted, 5)
        finally:
            w.close()
            server.close()
            await server.wait_closed()

    return asyncio.run(main())


def test_accepted_connections_have_nodelay() -> None:
    assert _nodelay_of_accepted(_listen("127.0.0.1", 0)) != 0


def test_a_plain_socket_would_not_get_it() -> None:
    # What the test above guards against: asyncio leaves proto-0 sockets with Nagle on.
    plain = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    plain.bind(("127.0.0.1", 0))
    plain.listen(8)
    assert _nodelay_of_accepted(plain) == 0
