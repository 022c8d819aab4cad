"""The floor: the most any Python server could reach against the benchmark's devices on this
machine.

A stand-in server answers each device's hello and proof with the bodies a real onboarding
returned (so the devices sign, build their CSR and read an answer of the real size), over TLS
with the server's own certificate, from as many processes as the real server has workers, each
on asyncio's TLS transport like uvicorn. For each proof it does the crypto a server cannot skip
(its `Work`, `proof_work`: the proof's verify, the CSR's verify, the certificate's signature)
and nothing else: no JSON, no rules, no database, no framework. The devices spend all they spend
against the real server. The ratio of its rate to the ceiling is the highest ratio the onboarding
benchmark can show with these devices on these cores, whatever the server does.

A `Work` may do more and answer hello itself: the floor with the store (bench/onboarding.py)
adds the database's part of an onboarding, which no server that keeps its records can skip.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import signal
import socket
import ssl
from collections.abc import Callable
from typing import Any

_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
_LENGTH = b"\r\ncontent-length:"
HELLO_PATH = b"/v1/onboard/hello"
PROOF_PATH = b"/v1/onboard/proof"


def canned_answers(hello: dict[str, Any], proof: dict[str, Any]) -> dict[bytes, bytes]:
    """Whole HTTP answers per request path, from a real onboarding's JSON bodies."""
    out = {}
    for path, body in ((HELLO_PATH, hello), (PROOF_PATH, proof)):
        raw = json.dumps(body).encode()
        out[path] = _HEAD % len(raw) + raw
    return out


# What a floor does for each request besides answering: called with its path and body, it may
# return a JSON body that replaces the canned answer (the store's floor hands out challenges).
Work = Callable[[bytes, bytes], bytes | None]


def proof_work(on_proof: Callable[[], object]) -> Work:
    """The floor's work: `on_proof` for each proof, the canned answers."""

    def work(path: bytes, _body: bytes) -> bytes | None:
        if path == PROOF_PATH:
            on_proof()
        return None

    return work


class _Answering(asyncio.Protocol):
    """Reads HTTP/1.1 requests (Content-Length bodies) and writes the canned answer of each,
    or the one `work` gives instead."""

    def __init__(self, answers: dict[bytes, bytes], work: Work) -> None:
        self.answers = answers
        self.work = work
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = self.buf[:end].lower()
            at = head.find(_LENGTH)
            length = int(head[at + len(_LENGTH) :].split(b"\r\n", 1)[0]) if at >= 0 else 0
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            path = head.split(b" ", 2)[1]
            raw = self.work(path, body)
            assert self.transport is not None
            self.transport.write(self.answers[path] if raw is None else _HEAD % len(raw) + raw)


def _serve(
    sock: socket.socket,
    context: ssl.SSLContext,
    answers: dict[bytes, bytes],
    make_work: Callable[[], Work],
) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    work = make_work()  # in this process: what it opens (a database) is its own

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_server(lambda: _Answering(answers, work), sock=sock, ssl=context)
        await asyncio.Event().wait()

    asyncio.run(main())


class FloorServer:
    """The stand-in, in `workers` forked processes on one listening socket of loopback."""

    def __init__(
        self,
        make_context: Callable[[], ssl.SSLContext],
        answers: dict[bytes, bytes],
        make_work: Callable[[], Work],
        workers: int,
    ) -> None:
        # TCP_NODELAY is set by asyncio on accepted sockets only when the listener says TCP.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        ctx = multiprocessing.get_context("fork")
        self.procs = [
            ctx.Process(
                target=_serve, args=(self.sock, make_context(), answers, make_work), daemon=True
            )
            for _ in range(workers)
        ]

    def start(self) -> FloorServer:
        for p in self.procs:
            p.start()
        return self

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.join(5)
        self.sock.close()
