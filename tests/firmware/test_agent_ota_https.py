# agent.https's OTA half over a fake socket: the exact GET bytes (RFC 9110 9.3.1, 14.2 Range),
# a ranged answer streamed into a file in chunks of the caller's buffer (RFC 9110 14.4
# Content-Range), and every answer that must not be written: a range that starts elsewhere, a
# whole answer to a ranged request, 416, no Content-Length, a body over the limit; a cut body
# keeps what arrived (the resume point).
# heapsize: 64k
import io
from agent import https
from agent.errors import LinkError
from fakesock import FakeSock
from fwtest import raises


class Sink(io.IOBase):
    # A file as download() sees it: each write recorded with its size.
    def __init__(self):
        self.data = bytearray()
        self.sizes = []

    def write(self, b):
        self.data += bytes(b)
        self.sizes.append(len(b))
        return len(b)


def ranged(body, start, total, extra=b""):
    end = start + len(body) - 1
    return (
        b"HTTP/1.1 206 Partial Content\r\nContent-Length: %d\r\n"
        b"Content-Range: bytes %d-%d/%d\r\n%s\r\n" % (len(body), start, end, total, extra) + body
    )


def fetch(raw, offset=0, buf=None, limit=1 << 20, chunk=0):
    s = FakeSock(raw, chunk)
    f = Sink()
    got = https.download(s, "localhost", 8443, "/v1/ota/r/payload", offset, f, buf, limit)
    return got, f, s


def test_get_bytes_exact_with_and_without_range():
    assert https.get_bytes("localhost", 8443, "/v1/ota/unix-0.2.0/payload", 1234) == (
        b"GET /v1/ota/unix-0.2.0/payload HTTP/1.1\r\n"
        b"Host: localhost:8443\r\n"
        b"User-Agent: qlink/0.1.0\r\n"
        b"Accept: application/json, application/octet-stream\r\n"
        b"Range: bytes=1234-\r\n"
        b"Connection: close\r\n\r\n"
    )
    head = https.get_bytes("qlink.example", 443, "/v1/ota/x/head?device=ab")
    assert head.startswith(b"GET /v1/ota/x/head?device=ab HTTP/1.1\r\nHost: qlink.example\r\n")
    assert b"Range" not in head
    assert https.get_bytes("h", 443, "/p", 0).count(b"Range: bytes=0-\r\n") == 1


def test_ranged_answer_is_streamed_in_chunks_of_the_callers_buffer():
    body = bytes(range(256)) * 10  # 2560 bytes
    buf = bytearray(1024)
    (status, n), f, s = fetch(ranged(body[1000:], 1000, 2560), 1000, buf)
    assert (status, n) == (206, 1560)
    assert f.data == body[1000:]
    assert max(f.sizes) <= 1024
    assert s.out.startswith(b"GET /v1/ota/r/payload HTTP/1.1\r\n")
    assert b"\r\nRange: bytes=1000-\r\n" in s.out
    # Small TLS records: the same bytes, in more writes.
    (status, n), f, _ = fetch(ranged(body, 0, 2560), 0, bytearray(1024), chunk=100)
    assert f.data == body and n == 2560


def test_whole_answer_is_taken_only_from_byte_zero():
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    (status, n), f, _ = fetch(raw, 0, bytearray(16))
    assert (status, n, bytes(f.data)) == (200, 5, b"hello")
    # From byte 3 the server had to send a range: a whole body would be appended after ours.
    (status, n), f, _ = fetch(raw, 3, bytearray(16))
    assert (status, n, bytes(f.data)) == (200, 0, b"")


def test_416_and_errors_are_returned_unwritten():
    raw = (
        b"HTTP/1.1 416 Range Not Satisfiable\r\n"
        b"Content-Range: bytes */10\r\nContent-Length: 0\r\n\r\n"
    )
    (status, n), f, _ = fetch(raw, 10, bytearray(16))
    assert (status, n, bytes(f.data)) == (416, 0, b"")
    raw = b'HTTP/1.1 404 Not Found\r\nContent-Length: 11\r\n\r\n{"error":1}'
    assert fetch(raw, 0, bytearray(16))[0] == (404, 0)


def test_range_that_starts_elsewhere_or_is_malformed_is_a_link_error():
    for raw in (
        ranged(b"abc", 4, 10),  # asked for 5
        ranged(b"abc", 5, 10).replace(b"5-7/10", b"5-8/10"),  # last byte not the body's end
        ranged(b"abc", 5, 10).replace(b"bytes 5", b"items 5"),
        ranged(b"abc", 5, 10).replace(b"Content-Range: bytes 5-7/10\r\n", b""),
        ranged(b"abc", 5, 10).replace(b"5-7", b"x-7"),
    ):
        f = Sink()
        s = FakeSock(raw)
        raises(LinkError, https.download, s, "h", 443, "/p", 5, f, bytearray(16), 100)
        assert f.data == b""


def test_body_over_the_limit_or_without_length_is_refused_before_a_byte_is_written():
    f = Sink()
    s = FakeSock(ranged(b"x" * 101, 0, 101))
    raises(LinkError, https.download, s, "h", 443, "/p", 0, f, bytearray(16), 100)
    assert f.data == b""
    for raw in (
        b"HTTP/1.1 200 OK\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ):
        f = Sink()
        raises(LinkError, https.download, FakeSock(raw), "h", 443, "/p", 0, f, bytearray(16), 100)
        assert f.data == b""


def test_cut_body_keeps_what_arrived():
    body = b"0123456789" * 10
    raw = ranged(body, 0, 100)[:-40]  # the link drops 40 bytes before the end
    f = Sink()
    e = raises(LinkError, https.download, FakeSock(raw), "h", 443, "/p", 0, f, bytearray(16), 200)
    assert str(e) == "http: body truncated"
    assert bytes(f.data) == body[:60]  # the next GET asks from byte 60
