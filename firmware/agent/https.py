# A small HTTPS/1.1 client for the onboarding API (JSON POST) and OTA (a JSON GET, a ranged GET
# streamed to a file), one request per connection.
# micropython-lib's `requests` does not verify certificates; this one only ever runs over
# agent.tlslink (pinned root, CERT_REQUIRED, host name checked) and has no plaintext path.
# Message syntax: RFC 9112 (HTTP/1.1), sections cited below. Malformed answers become
# LinkError with a short reason; the reader never indexes past what it received.
import json
from micropython import const
from agent import tlslink
from agent.errors import LinkError
from agent.version import VERSION

_BUF = const(256)  # bytes; receive buffer, also the longest status/header line accepted
_MAX_HEADERS = const(48)  # header lines before the answer is refused
_LIMIT = const(8192)  # bytes; default body limit (an onboarding answer is ~3 KiB)
_TIMEOUT_MS = const(10000)  # ms; per socket operation
_MAX_RETRY_AFTER = const(3600)  # s; a longer Retry-After is read as this

# Retry-After of the last response read (RFC 9110 10.2.3, delay-seconds form), 0 when absent:
# a 429 says when the server will take the request again.
retry_after = 0


def request_bytes(host, port, path, body):
    # RFC 9112 3.2: Host is mandatory in HTTP/1.1, with the port when it is not the default.
    # "Connection: close" (RFC 9112 9.6) lets the server end the exchange; Content-Length
    # (RFC 9112 6.2) frames our body, never chunked.
    hp = host if port == 443 else "%s:%d" % (host, port)
    head = (
        "POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: qlink/%s\r\n"
        "Content-Type: application/json\r\nAccept: application/json\r\n"
        "Content-Length: %d\r\nConnection: close\r\n\r\n" % (path, hp, VERSION, len(body))
    )
    return head.encode()


def get_bytes(host, port, path, offset=-1):
    # A GET without a body (RFC 9110 9.3.1); offset >= 0 asks for the representation from that
    # byte on (RFC 9110 14.2, "Range: bytes=N-"), offset < 0 for all of it (a JSON answer).
    hp = host if port == 443 else "%s:%d" % (host, port)
    rng = "Range: bytes=%d-\r\n" % offset if offset >= 0 else ""
    head = (
        "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: qlink/%s\r\n"
        "Accept: application/json, application/octet-stream\r\n%sConnection: close\r\n\r\n"
        % (path, hp, VERSION, rng)
    )
    return head.encode()


class _Reader:
    # Buffered reads over a stream with readinto(); one buffer for the whole response.
    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray(_BUF)
        self.pos = 0
        self.end = 0

    def _fill(self):
        try:
            n = self.sock.readinto(self.buf)
        except OSError as e:
            raise LinkError("http: read failed: %s" % tlslink.reason(e))
        if not n:
            return False
        self.pos = 0
        self.end = n
        return True

    def readline(self):
        # Returns one line without its CRLF (RFC 9112 2.2 lets a recipient accept a bare LF).
        # A line longer than the buffer is refused: no header we use is that long.
        line = b""
        while True:
            if self.pos == self.end and not self._fill():
                raise LinkError("http: connection closed mid-header")
            # A plain loop: bytearray.find is missing from some ports' builds.
            buf = self.buf
            i = self.pos
            while i < self.end and buf[i] != 0x0A:
                i += 1
            if i < self.end:
                line += self.buf[self.pos : i]
                self.pos = i + 1
                if line.endswith(b"\r"):
                    line = line[:-1]
                return line
            line += self.buf[self.pos : self.end]
            self.pos = self.end
            if len(line) > _BUF:
                raise LinkError("http: line too long")

    def readinto(self, mv):
        # Fills all of mv or raises: used where the length is known (Content-Length, chunks).
        got = 0
        n = len(mv)
        while got < n:
            if self.pos == self.end and not self._fill():
                raise LinkError("http: body truncated")
            k = min(n - got, self.end - self.pos)
            mv[got : got + k] = self.buf[self.pos : self.pos + k]
            self.pos += k
            got += k

    def readsome(self, buf, mv, n):
        # Up to n (<= len(buf)) body bytes into buf: what the header reads left buffered first,
        # then straight from the socket into the caller's buffer (no second copy). Returns the
        # count, 0 at the end of the stream. A full-size read passes buf itself; only a partial
        # one slices (one small memoryview object).
        if self.pos < self.end:
            k = min(n, self.end - self.pos)
            mv[:k] = self.buf[self.pos : self.pos + k]
            self.pos += k
            return k
        try:
            return self.sock.readinto(buf if n == len(buf) else mv[:n])
        except OSError as e:
            raise LinkError("http: read failed: %s" % tlslink.reason(e))

    def read_to_eof(self, limit):
        out = bytearray()
        while True:
            if self.pos == self.end and not self._fill():
                return out
            if len(out) + self.end - self.pos > limit:
                raise LinkError("http: body over %d bytes" % limit)
            out += self.buf[self.pos : self.end]
            self.pos = self.end


def _status(line):
    # RFC 9112 4: status-line = HTTP-version SP status-code SP [ reason-phrase ]
    if len(line) < 12 or not line.startswith(b"HTTP/1.") or line[8] != 0x20:
        raise LinkError("http: bad status line")
    if len(line) > 12 and line[12] != 0x20:
        raise LinkError("http: bad status line")
    code = 0
    for c in line[9:12]:
        if not 0x30 <= c <= 0x39:
            raise LinkError("http: bad status line")
        code = code * 10 + c - 0x30
    if code < 100:
        raise LinkError("http: bad status line")
    return code


def _digits(v, base):
    if not v:
        raise LinkError("http: bad length")
    try:
        n = int(v, base)
    except ValueError:
        raise LinkError("http: bad length")
    if n < 0:
        raise LinkError("http: bad length")
    return n


def _head(r):
    # Status line and header fields of one response (RFC 9112 4, 5): -> (status, Content-Length
    # or -1, chunked, Content-Range value or None); sets the module's `retry_after`.
    global retry_after
    retry_after = 0
    status = _status(r.readline())
    length = -1
    chunked = False
    crange = None
    count = 0
    while True:
        line = r.readline()
        if not line:
            break
        count += 1
        if count > _MAX_HEADERS:
            raise LinkError("http: too many headers")
        colon = line.find(b":")
        if colon <= 0:
            raise LinkError("http: bad header line")
        name = line[:colon].strip().lower()
        value = line[colon + 1 :].strip()
        if name == b"content-length":
            n = _digits(value, 10)
            # RFC 9112 6.3 (5): differing Content-Length values make the framing unknowable.
            if length >= 0 and n != length:
                raise LinkError("http: conflicting Content-Length")
            length = n
        elif name == b"content-range":
            crange = value
        elif name == b"retry-after":
            # The HTTP-date form is not read (the delay form is what qlink sends).
            if value and len(value) <= 10 and value.isdigit():
                n = int(value)
                retry_after = n if n < _MAX_RETRY_AFTER else _MAX_RETRY_AFTER
        elif name == b"transfer-encoding":
            # RFC 9112 6.1: the only coding we accept is chunked, and it must be the last one.
            if value.lower() != b"chunked":
                raise LinkError("http: unsupported Transfer-Encoding")
            chunked = True
    return status, length, chunked, crange


def read_response(sock, limit=_LIMIT):
    # Returns (status, body bytes) of one response, reading at most `limit` body bytes; sets
    # the module's `retry_after`.
    r = _Reader(sock)
    status, length, chunked, _ = _head(r)
    if status == 204 or status == 304:
        return status, b""
    if chunked:
        # RFC 9112 6.3 (4): Transfer-Encoding overrides Content-Length.
        return status, _read_chunked(r, limit)
    if length >= 0:
        if length > limit:
            raise LinkError("http: body over %d bytes" % limit)
        body = bytearray(length)
        r.readinto(memoryview(body))
        return status, body
    # RFC 9112 6.3 (8): no framing, the body ends when the server closes.
    return status, r.read_to_eof(limit)


def _read_chunked(r, limit):
    # RFC 9112 7.1: chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF; last-chunk is size 0,
    # followed by optional trailer fields and an empty line.
    body = bytearray()
    while True:
        line = r.readline()
        semi = line.find(b";")
        if semi >= 0:
            line = line[:semi]
        n = _digits(line.strip(), 16)
        if n == 0:
            break
        if len(body) + n > limit:
            raise LinkError("http: body over %d bytes" % limit)
        start = len(body)
        body.extend(bytes(n))  # grow once per chunk, then fill in place
        r.readinto(memoryview(body)[start:])
        if r.readline():
            raise LinkError("http: chunk not followed by CRLF")
    count = 0
    while r.readline():  # trailer fields: read and ignore
        count += 1
        if count > _MAX_HEADERS:
            raise LinkError("http: too many trailers")
    return body


def exchange(sock, host, port, path, obj, limit=_LIMIT):
    # One JSON POST over an open stream: returns (status, parsed JSON or None for no body).
    body = json.dumps(obj).encode()
    # One write, so one TLS record: head and body in two would leave the body waiting on
    # Nagle's algorithm for the server's delayed ACK (tens of ms per request).
    return _json_exchange(sock, request_bytes(host, port, path, body) + body, limit)


def _json_exchange(sock, request, limit):
    # Sends one whole request, reads its answer: (status, parsed JSON or None for no body).
    try:
        sock.write(request)
    except OSError as e:
        raise LinkError("http: write failed: %s" % tlslink.reason(e))
    status, raw = read_response(sock, limit)
    if not raw:
        return status, None
    try:
        return status, json.loads(raw)
    except ValueError:
        raise LinkError("http: body is not JSON (status %d)" % status)


def _range_start(crange, length):
    # Content-Range: bytes first-last/complete (RFC 9110 14.4): -> first; the last position must
    # close the body Content-Length announces. Anything else is a framing we cannot trust.
    if crange is None or not crange.startswith(b"bytes ") or length < 0:
        raise LinkError("http: bad Content-Range")
    dash = crange.find(b"-")
    slash = crange.find(b"/")
    if dash < 0 or slash < dash:
        raise LinkError("http: bad Content-Range")
    first = _digits(crange[6:dash], 10)
    if length and _digits(crange[dash + 1 : slash], 10) != first + length - 1:
        raise LinkError("http: bad Content-Range")
    return first


def download(sock, host, port, path, offset, f, buf, limit):
    # GET path from byte `offset` into the open file f (appended), in chunks of len(buf) from the
    # caller's one buffer: the body never sits in RAM whole. Returns (status, body bytes
    # written). 206 must start at `offset`; 200 (the whole representation) only when offset is 0;
    # other answers are not written (their status says why, e.g. 416: the range is past the end).
    # limit: the most body bytes taken, so a lying server cannot fill the flash.
    try:
        sock.write(get_bytes(host, port, path, offset))
    except OSError as e:
        raise LinkError("http: write failed: %s" % tlslink.reason(e))
    r = _Reader(sock)
    status, length, chunked, crange = _head(r)
    if status == 206:
        if _range_start(crange, length) != offset:
            raise LinkError("http: range starts elsewhere")
    elif status != 200 or offset:
        return status, 0
    if chunked or length < 0:
        raise LinkError("http: download without Content-Length")
    if length > limit:
        raise LinkError("http: body over %d bytes" % limit)
    mv = memoryview(buf)
    left = length
    while left:
        k = r.readsome(buf, mv, left if left < len(buf) else len(buf))
        if not k:
            # The file keeps what arrived: the next GET resumes after it (docs/ota.md).
            raise LinkError("http: body truncated")
        f.write(buf if k == len(buf) else mv[:k])
        left -= k
    return status, length


class Client:
    # Bound to the configured server: every post opens a verified TLS connection to it.
    def __init__(self, host, port, root_der, prefix="", timeout_ms=_TIMEOUT_MS, limit=_LIMIT):
        self.host = host
        self.port = port
        self.root_der = root_der
        self.prefix = prefix
        self.timeout_ms = timeout_ms
        self.limit = limit
        self.retry_after = 0

    def get(self, path, limit=_LIMIT):
        # One JSON GET: -> (status, parsed JSON or None). The body is read whole, up to limit.
        self.retry_after = 0
        s, _ = tlslink.connect(self.host, self.port, self.root_der, self.timeout_ms)
        try:
            answer = _json_exchange(s, get_bytes(self.host, self.port, self.prefix + path), limit)
            self.retry_after = retry_after
            return answer
        finally:
            tlslink.close(s)

    def download(self, path, offset, f, buf, limit):
        # download() over a fresh verified TLS connection; see there.
        s, _ = tlslink.connect(self.host, self.port, self.root_der, self.timeout_ms)
        try:
            return download(s, self.host, self.port, self.prefix + path, offset, f, buf, limit)
        finally:
            tlslink.close(s)

    def post(self, path, obj):
        # After the call, self.retry_after is the answer's Retry-After in seconds (0: none).
        self.retry_after = 0
        s, _ = tlslink.connect(self.host, self.port, self.root_der, self.timeout_ms)
        try:
            answer = exchange(s, self.host, self.port, self.prefix + path, obj, self.limit)
            self.retry_after = retry_after
            return answer
        finally:
            tlslink.close(s)
