"""hil.simdevice's HTTP/1.1 client against a scripted TLS server on loopback: framing
(Content-Length, chunked, to the end), keep-alive, the server's closes, malformed answers, and
the pinned root."""

from __future__ import annotations

import gc
import hashlib
import json
import socket
import ssl
import struct
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from hil.simdevice import HttpError, HttpsConnection, SimDevice, pubkey_bytes
from host.server.ca import CertificateAuthority


def ok(body: bytes, *fields: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + b"".join(
        f + b"\r\n" for f in fields
    )
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


@dataclass
class Reply:
    """What the server sends for one request (pieces are separate TLS writes), and whether it
    closes the connection afterwards."""

    pieces: list[bytes]
    close: bool = False


@dataclass
class Seen:
    conn: int  # the server's count of accepted connections, from 1
    head: bytes
    body: bytes


@dataclass
class Server:
    """Answers the requests it reads, on any connection, with `replies` in order."""

    ctx: ssl.SSLContext
    replies: list[Reply] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    conns: int = 0
    closed: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def serve(self, listener: socket.socket, stop: threading.Event) -> None:
        threads = []
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            with self._lock:
                self.conns += 1
                n = self.conns
            t = threading.Thread(target=self._connection, args=(raw, n))
            t.start()
            threads.append(t)
        for t in threads:
            t.join(10)

    def _connection(self, raw: socket.socket, n: int) -> None:
        raw.settimeout(10)
        try:
            with raw, self.ctx.wrap_socket(raw, server_side=True) as tls:
                buf = b""
                while True:
                    while b"\r\n\r\n" not in buf:
                        data = tls.recv(65536)
                        if not data:
                            return
                        buf += data
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    length = next(
                        int(line.split(b":", 1)[1])
                        for line in head.lower().split(b"\r\n")
                        if line.startswith(b"content-length:")
                    )
                    while len(buf) < length:
                        buf += tls.recv(65536)
                    with self._lock:
                        self.seen.append(Seen(n, head, buf[:length]))
                        reply = self.replies.pop(0)
                    buf = buf[length:]
                    for piece in reply.pieces:
                        tls.sendall(piece)
                    if reply.close:
                        return
        except OSError:
            pass  # a refused handshake, or a client that went away
        finally:
            self.closed.release()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def server(ca: CertificateAuthority) -> Iterator[tuple[Server, SimDevice]]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(ca.cert_path("server")), str(ca.key_path("server")))
    srv = Server(ctx)
    stop = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(0.05)
        port = listener.getsockname()[1]
        t = threading.Thread(target=srv.serve, args=(listener, stop))
        t.start()
        try:
            yield srv, SimDevice(f"https://localhost:{port}", ca.root_der(), timeout_s=5)
        finally:
            stop.set()
            t.join(10)


def test_content_length_answer_and_the_request_as_sent(server: tuple[Server, SimDevice]) -> None:
    srv, d = server
    srv.replies = [Reply([ok(b'{"a": 1}')]), Reply([ok(b"")])]
    r = d.post("/v1/x", {"k": "v"})
    assert (r.status, r.body) == (200, {"a": 1})
    assert d.post("/v1/y", b"{raw, not json").body == {}  # raw bytes go out as given
    first, second = srv.seen
    port = d.api_url.rsplit(":", 1)[1]
    assert first.head.split(b"\r\n") == [
        b"POST /v1/x HTTP/1.1",
        f"Host: localhost:{port}".encode(),
        b"Content-Type: application/json",
        b"Content-Length: 10",
    ]
    assert first.body == b'{"k": "v"}'
    assert second.body == b"{raw, not json"
    assert (first.conn, second.conn) == (1, 2)  # without conn=, a connection per request


def test_error_answer_and_interim_answer(server: tuple[Server, SimDevice]) -> None:
    srv, d = server
    err = json.dumps({"error": "not_registered", "detail": "no"}).encode()
    srv.replies = [
        Reply(
            [
                b"HTTP/1.1 100 Continue\r\n\r\n",
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: %d\r\n\r\n" % len(err) + err,
            ]
        )
    ]
    r = d.hello()
    assert (r.status, r.error) == (403, "not_registered")
    sent = json.loads(srv.seen[0].body)
    assert sent == {"device_id": d.device_id, "public_key": d.public_key.hex()}


def test_chunked_answer_across_several_writes(server: tuple[Server, SimDevice]) -> None:
    srv, d = server
    srv.replies = [
        Reply(
            [
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\n",
                b'{"a":\r\n',
                b"A;ext=1\r\n 1234567",
                b"8}\r\n0\r\nx-trailer: 1\r\n",
                b"\r\n",
            ]
        ),
        Reply([ok(b'{"b": 2}')]),
    ]
    conn = d.connection()
    try:
        assert d.post("/x", {}, conn=conn).body == {"a": 12345678}
        assert d.post("/x", {}, conn=conn).body == {"b": 2}  # the chunked framing was exact
    finally:
        conn.close()
    assert [s.conn for s in srv.seen] == [1, 1]


def test_body_to_the_end_of_the_connection(server: tuple[Server, SimDevice]) -> None:
    srv, d = server
    srv.replies = [Reply([b"HTTP/1.1 200 OK\r\n\r\n", b'{"a":', b" 1}"], close=True)]
    assert d.post("/x", {}).body == {"a": 1}


def test_keep_alive_carries_several_requests(server: tuple[Server, SimDevice]) -> None:
    srv, d = server
    srv.replies = [Reply([ok(b'{"n": 1}')]), Reply([ok(b'{"n": 2}')])]
    with d.connection() as conn:
        assert d.post("/x", {}, conn=conn).body == {"n": 1}
        assert d.post("/x", {}, conn=conn).body == {"n": 2}
    assert [s.conn for s in srv.seen] == [1, 1]
    assert srv.conns == 1


def test_connection_close_from_the_server_means_a_new_connection(
    server: tuple[Server, SimDevice],
) -> None:
    srv, d = server
    # The server says close but keeps the connection: a client that reused it would be seen.
    srv.replies = [Reply([ok(b'{"n": 1}', b"Connection: close")]), Reply([ok(b'{"n": 2}')])]
    with d.connection() as conn:
        assert d.post("/x", {}, conn=conn).body == {"n": 1}
        assert d.post("/x", {}, conn=conn).body == {"n": 2}
    assert [s.conn for s in srv.seen] == [1, 2]


def test_idle_connection_closed_by_the_server_is_reopened_once(
    server: tuple[Server, SimDevice],
) -> None:
    srv, d = server
    srv.replies = [Reply([ok(b'{"n": 1}')], close=True), Reply([ok(b'{"n": 2}')])]
    with d.connection() as conn:
        assert d.post("/x", {}, conn=conn).body == {"n": 1}
        assert srv.closed.acquire(timeout=5)  # closed while idle, without a word
        assert d.post("/x", {}, conn=conn).body == {"n": 2}
    assert [s.conn for s in srv.seen] == [1, 2]


def test_reopened_connection_closed_again_is_an_error(server: tuple[Server, SimDevice]) -> None:
    srv, d = server
    srv.replies = [Reply([ok(b"{}")], close=True), Reply([], close=True)]
    with d.connection() as conn:
        d.post("/x", {}, conn=conn)
        assert srv.closed.acquire(timeout=5)
        with pytest.raises(ConnectionError):
            d.post("/x", {}, conn=conn)
    assert [s.conn for s in srv.seen] == [1, 2]  # one retry, not more


def test_new_connection_closed_before_the_answer_is_an_error(
    server: tuple[Server, SimDevice],
) -> None:
    srv, d = server
    srv.replies = [Reply([], close=True)]
    with pytest.raises(ConnectionError):
        d.post("/x", {})
    assert srv.conns == 1


def test_connection_cut_in_the_middle_of_the_answer_is_an_error(
    server: tuple[Server, SimDevice],
) -> None:
    srv, d = server
    srv.replies = [Reply([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}"], close=True)]
    with pytest.raises(HttpError, match="middle of its answer"):
        d.post("/x", {})
    assert srv.conns == 1


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (b"HTTP/1.1 OK\r\n\r\n", "malformed status line"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "malformed status line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n", "malformed Content-Length"),
        (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "Transfer-Encoding"),
    ],
)
def test_malformed_answer_raises_a_clear_error(
    server: tuple[Server, SimDevice], answer: bytes, match: str
) -> None:
    srv, d = server
    srv.replies = [Reply([answer])]
    conn = d.connection()
    with pytest.raises(HttpError, match=match):
        d.post("/x", {}, conn=conn)
    assert conn._sock is None  # not left open in an unknown state


def test_wrong_pinned_root_fails_the_handshake(
    server: tuple[Server, SimDevice], tmp_path: Path
) -> None:
    srv, d = server
    other = CertificateAuthority.load_or_create(tmp_path)
    stranger = SimDevice(d.api_url, other.root_der())
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        stranger.post("/x", {})
    assert srv.seen == []


def test_request_line_and_fields_are_checked() -> None:
    conn = HttpsConnection("localhost", 1, ssl.create_default_context(), 1)
    for method, path in (("POST", "/a b"), ("POST", "/a\r\nX: y"), ("GE T", "/")):
        with pytest.raises(ValueError, match="request line"):
            conn.request(method, path, b"")
    with pytest.raises(ValueError, match="header field"):
        conn.request("POST", "/", b"", {"X": "a\r\nInjected: 1"})


def test_identity_is_computed_once_and_read_only() -> None:
    d = SimDevice("https://localhost", b"")
    assert d.public_key is d.public_key and d.device_id is d.device_id
    assert d.device_id == hashlib.sha256(pubkey_bytes(d.key.public_key())).hexdigest()
    with pytest.raises(AttributeError):
        d.device_id = "x"  # type: ignore[misc]
    d.key = ec.generate_private_key(ec.SECP256R1())  # a new key is a new identity
    assert d.public_key == pubkey_bytes(d.key.public_key())
    assert d == SimDevice("https://localhost", b"", key=d.key)


def test_connection_reset_at_once_leaves_no_socket_open() -> None:
    # A server that dies accepts and resets: the reset may land before the TLS socket is even
    # built. Whatever the moment, the device's socket is closed, not left to the collector.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def reset_all() -> None:
        while not stop.is_set():
            try:
                c, _ = listener.accept()
            except OSError:
                return
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()

    t = threading.Thread(target=reset_all, daemon=True)
    t.start()
    context = ssl.create_default_context()
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # the resetting thread answers within the client's steps
    try:
        for _ in range(5000):
            conn = HttpsConnection("127.0.0.1", port, context, 2)
            with pytest.raises(OSError):
                conn.request("POST", "/v1/onboard/hello", b"{}")
            assert conn._sock is None
        gc.collect()  # an unclosed socket would warn here (warnings are errors)
    finally:
        sys.setswitchinterval(switch)
        stop.set()
        socket.create_connection(("127.0.0.1", port)).close()  # wakes the accepting thread
        t.join(5)
        listener.close()
