# agent.https over a fake socket: exact request bytes (RFC 9112) and response parsing,
# including chunked bodies, bad status lines and oversize bodies (always LinkError).
# heapsize: 64k
from agent import https
from agent.errors import LinkError
from fakesock import FakeSock
from fwtest import raises


def parse(raw, limit=8192, chunk=0):
    return https.read_response(FakeSock(raw, chunk), limit)


def test_request_bytes_exact():
    body = b'{"a": 1}'
    assert https.request_bytes("localhost", 8443, "/v1/onboard/hello", body) == (
        b"POST /v1/onboard/hello HTTP/1.1\r\n"
        b"Host: localhost:8443\r\n"
        b"User-Agent: qlink/0.1.0\r\n"
        b"Content-Type: application/json\r\n"
        b"Accept: application/json\r\n"
        b"Content-Length: 8\r\n"
        b"Connection: close\r\n\r\n"
    )


def test_request_host_omits_default_port_rfc9112_3_2():
    req = https.request_bytes("qlink.example", 443, "/x", b"")
    assert b"\r\nHost: qlink.example\r\n" in req
    assert b"Content-Length: 0\r\n" in req


def test_exchange_writes_request_and_json_body_in_one_write():
    # One write = one TLS record: a body written apart would wait on Nagle for a delayed ACK.
    s = FakeSock(b'HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{"ok": true}')
    status, doc = https.exchange(s, "h", 8443, "/p", {"k": "v"})
    assert status == 200
    assert doc == {"ok": True}
    assert bytes(s.out).endswith(b"Content-Length: 10\r\nConnection: close\r\n\r\n" + b'{"k": "v"}')
    assert s.writes == 1


def test_content_length_body():
    raw = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 7\r\n\r\n{"a":1}'
    assert parse(raw) == (200, b'{"a":1}')


def test_retry_after_delay_seconds_rfc9110_10_2_3():
    head = b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\n"
    assert parse(head + b"Retry-After: 12\r\n\r\n")[0] == 429
    assert https.retry_after == 12
    parse(head + b"retry-after: 99999999\r\n\r\n")
    assert https.retry_after == 3600  # capped
    for other in (b"Retry-After: Wed, 21 Oct 2026 07:28:00 GMT\r\n", b"Retry-After: -5\r\n", b""):
        parse(head + other + b"\r\n")
        assert https.retry_after == 0


def test_content_length_body_one_byte_reads():
    raw = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\n\r\nhello"
    assert parse(raw, chunk=1) == (403, b"hello")


def test_bare_lf_line_endings_accepted_rfc9112_2_2():
    assert parse(b"HTTP/1.1 200 OK\nContent-Length: 2\n\n{}") == (200, b"{}")


def test_status_without_reason_phrase():
    assert parse(b"HTTP/1.1 204\r\n\r\n") == (204, b"")


def test_chunked_body_rfc9112_7_1():
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'4\r\n{"a"\r\n'
        b'A;ext=1\r\n: "0123456\r\n'
        b"1\r\n}\r\n"
        b"0\r\nX-Trailer: 1\r\n\r\n"
    )
    assert parse(raw) == (200, b'{"a": "0123456}')


def test_chunked_overrides_content_length_rfc9112_6_3():
    raw = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\n{}\r\n0\r\n\r\n"
    )
    assert parse(raw) == (200, b"{}")


def test_body_until_close_without_framing_rfc9112_6_3():
    assert parse(b'HTTP/1.0 200 OK\r\n\r\n{"x": 2}') == (200, b'{"x": 2}')


def test_bad_status_lines_are_link_errors():
    for line in (
        b"",
        b"HTTP/1.1\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 099 X\r\n\r\n",
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"\x16\x03\x01\x00\x05hello",  # a TLS record where HTTP was expected
    ):
        raises(LinkError, parse, line)


def test_bad_headers_are_link_errors():
    for raw in (
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n: empty name\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 600 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X: 1\r\n" * 49 + b"\r\n",
    ):
        raises(LinkError, parse, raw)


def test_truncated_responses_are_link_errors():
    full = b'HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n{"a":1}'
    for cut in range(len(full)):
        raises(LinkError, parse, full[:cut])
    chunked = b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{"a"\r\n0\r\n\r\n'
    for cut in range(len(chunked)):
        raises(LinkError, parse, chunked[:cut])


def test_bad_chunks_are_link_errors():
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    for body in (b"zz\r\n", b"\r\n", b"2\r\n{}XX0\r\n\r\n", b"-1\r\n"):
        raises(LinkError, parse, head + body)


def test_oversize_bodies_are_link_errors():
    raises(LinkError, parse, b"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n" + b"x" * 101, 100)
    assert (
        parse(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100, 100)[1] == b"x" * 100
    )
    # A huge announced length is refused before anything is allocated for it.
    raises(LinkError, parse, b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n")
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    raises(LinkError, parse, head + b"40\r\n" + b"x" * 64 + b"\r\n41\r\n", 100)
    raises(LinkError, parse, b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * 101, 100)


def test_non_json_body_is_link_error():
    s = FakeSock(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    raises(LinkError, https.exchange, s, "h", 443, "/p", {})


def test_empty_body_gives_none():
    s = FakeSock(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert https.exchange(s, "h", 443, "/p", {}) == (200, None)


def test_socket_errors_become_link_error():
    s = FakeSock(b"", read_error=OSError(110))
    raises(LinkError, https.read_response, s, 100)
