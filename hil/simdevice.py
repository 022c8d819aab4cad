"""A simulated device in CPython: real P-256 keys, real TLS with the pinned root, the real
onboarding protocol, and an MQTT connection with the issued certificate.

Tests use the tamper hooks of `proof_body` to send what a broken or hostile device would.

The benchmark runs thousands of these devices on the same cores as the server, so their CPU
counts against the server's result. The HTTPS calls therefore use a small HTTP/1.1 client of
this module (`HttpsConnection`) rather than http.client: one write per request, one read for
a typical answer, no file objects or parsed header mappings. A request costs about a third of
http.client's CPU, which leaves the TLS handshake as most of what a device's connection costs.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
import socket
import ssl
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

DOMAIN_LABEL = b"qlink-onboard-v1\x00"


@dataclass(frozen=True)
class ApiResponse:
    status: int
    body: dict[str, Any]

    @property
    def error(self) -> str | None:
        value = self.body.get("error")
        return value if isinstance(value, str) else None


@functools.lru_cache(maxsize=16)
def _shared_root_context(root_der: bytes) -> ssl.SSLContext:
    """One context per pinned root for the HTTPS calls (loading the root costs CPU that a fleet
    of simulated devices would otherwise spend on every request)."""
    return root_context(root_der)


def root_context(root_der: bytes) -> ssl.SSLContext:
    """A client context that trusts `root_der` alone. The root goes in as PEM: after the last
    DER certificate, Python's `ssl` takes any error left on the thread's OpenSSL queue as its
    own, and a PKCS#11 library's start in the same process leaves some there."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name
    ctx.load_verify_locations(cadata=ssl.DER_cert_to_PEM_cert(root_der))
    return ctx


def pubkey_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def make_csr(key: ec.EllipticCurvePrivateKey, common_name: str) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


class HttpError(ConnectionError):
    """The server's answer is not well-formed HTTP/1.1, or the server closed the connection
    without one."""


_MAX_HEAD = 64 * 1024  # an answer's head (status line, fields) or one chunk-size/trailer line
_RECV = 64 * 1024
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,15}")
_BAD_IN_TARGET = re.compile(r"[\x00-\x20\x7f]")  # what may not appear in a method or path
# How a server's close of a kept-alive connection shows before its answer's first byte.
_CLOSED = (
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)


class HttpsConnection:
    """An HTTP/1.1 connection over TLS: it opens on the first request and carries several
    (keep-alive) until closed, by `close()` or by the server.

    Each request goes out in one write (head and body); the answer is parsed from one buffer.
    A request whose reused connection turns out closed before the answer starts is sent once
    more on a new connection (a server may drop an idle connection at any time); on a new
    connection that is an error.
    """

    def __init__(
        self, host: str, port: int | None, context: ssl.SSLContext, timeout: float
    ) -> None:
        self.host = host
        self.port = port or 443
        self.timeout = timeout
        self._context = context
        try:
            name = host.encode("ascii").decode()
        except UnicodeEncodeError:
            name = host.encode("idna").decode()
        name = f"[{name}]" if ":" in name else name
        self._host_field = name if self.port == 443 else f"{name}:{self.port}"
        self._sock: ssl.SSLSocket | None = None
        self._buf = b""

    def __enter__(self) -> HttpsConnection:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        sock, self._sock, self._buf = self._sock, None, b""
        if sock is not None:
            sock.close()

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """Send one request (Content-Type application/json unless `headers` says otherwise)
        and return the answer's status and body."""
        data = self._head(method, path, len(body), headers) + body
        while True:  # at most twice: the second time is on a new connection
            fresh = self._sock is None
            sock = self._open() if self._sock is None else self._sock
            try:
                try:
                    sock.sendall(data)
                    first = self._buf or sock.recv(_RECV)
                except _CLOSED as e:
                    unanswered: OSError = e
                else:
                    if first:
                        self._buf = first
                        return self._answer(method)
                    unanswered = HttpError("the server closed the connection without answering")
            except BaseException:
                self.close()
                raise
            self.close()
            if fresh:
                raise unanswered

    # -- the request ------------------------------------------------------------------------
    def _head(
        self, method: str, path: str, length: int, headers: Mapping[str, str] | None
    ) -> bytes:
        if _BAD_IN_TARGET.search(method) or _BAD_IN_TARGET.search(path) or not path:
            raise ValueError(f"not a valid request line: {method!r} {path!r}")
        lines = f"{method} {path} HTTP/1.1\r\nHost: {self._host_field}\r\n"
        if not headers:
            lines += "Content-Type: application/json\r\n"
        else:
            if not any(k.lower() == "content-type" for k in headers):
                lines += "Content-Type: application/json\r\n"
            for k, v in headers.items():
                if not k or _BAD_IN_TARGET.search(k) or ":" in k or "\r" in v or "\n" in v:
                    raise ValueError(f"not a valid header field: {k!r}: {v!r}")
                lines += f"{k}: {v}\r\n"
        return f"{lines}Content-Length: {length}\r\n\r\n".encode("latin-1")

    def _open(self) -> ssl.SSLSocket:
        # The TLS socket is built before it connects: wrapping a connected socket hands its
        # descriptor over first, and a reset arriving just then raised with the new socket
        # unreachable and open. Each address is tried in turn, as socket.create_connection does.
        addresses = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        for i, (family, kind, proto, _name, address) in enumerate(addresses):
            sock = self._context.wrap_socket(
                socket.socket(family, kind, proto), server_hostname=self.host
            )
            try:
                sock.settimeout(self.timeout)
                # The head and body go out in one write, yet a lone small write must not wait
                # for the delayed ACK of the previous one either.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.connect(address)  # TCP, then the TLS handshake
            except BaseException as e:
                sock.close()
                if isinstance(e, ssl.SSLError | ssl.CertificateError) or i == len(addresses) - 1:
                    raise
                continue
            self._sock, self._buf = sock, b""
            return sock
        raise OSError(f"no address for {self.host!r}")

    # -- the answer -------------------------------------------------------------------------
    def _answer(self, method: str) -> tuple[int, bytes]:
        while True:
            status, length, chunked, close = _parse_head(self._until(b"\r\n\r\n"))
            if not 100 <= status < 200:
                break  # an interim answer (1xx) has no body: the real one follows
        if method == "HEAD" or status in (204, 304):
            body = b""
        elif chunked:
            body = self._chunked()
        elif length is not None:
            body = self._take(length)
        else:  # no framing: the body runs to the end of the connection
            body, close = self._to_eof(), True
        if close:
            self.close()
        return status, body

    def _recv(self) -> bytes:
        assert self._sock is not None
        data = self._sock.recv(_RECV)
        if not data:
            raise HttpError("the server closed the connection in the middle of its answer")
        return data

    def _until(self, sep: bytes) -> bytes:
        """The buffer up to `sep` (which is consumed), reading as needed."""
        start = 0
        while (i := self._buf.find(sep, start)) < 0:
            if len(self._buf) > _MAX_HEAD:
                raise HttpError("the server's answer has a head or line over 64 KiB")
            start = max(0, len(self._buf) - len(sep) + 1)
            self._buf += self._recv()
        out, self._buf = self._buf[:i], self._buf[i + len(sep) :]
        return out

    def _take(self, n: int) -> bytes:
        if len(self._buf) < n:
            parts, have = [self._buf], len(self._buf)
            while have < n:
                data = self._recv()
                parts.append(data)
                have += len(data)
            self._buf = b"".join(parts)
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _chunked(self) -> bytes:
        parts = []
        while True:
            size = self._until(b"\r\n").split(b";", 1)[0].strip(b" \t")
            if not _CHUNK_SIZE.fullmatch(size):
                raise HttpError(f"malformed chunk size from the server: {size[:40]!r}")
            n = int(size, 16)
            if n == 0:
                break
            parts.append(self._take(n))
            if self._take(2) != b"\r\n":
                raise HttpError("a chunk from the server does not end with CRLF")
        while self._until(b"\r\n"):  # trailer fields, up to the empty line
            pass
        return b"".join(parts)

    def _to_eof(self) -> bytes:
        assert self._sock is not None
        parts = [self._buf]
        while data := self._sock.recv(_RECV):
            parts.append(data)
        self._buf = b""
        return b"".join(parts)


def _parse_head(head: bytes) -> tuple[int, int | None, bool, bool]:
    """(status, Content-Length or None, chunked, close after) of an answer's head."""
    status_line, *lines = head.split(b"\r\n")
    version, _, rest = status_line.partition(b" ")
    code = rest[:3]
    if (
        version not in (b"HTTP/1.1", b"HTTP/1.0")
        or len(code) != 3
        or not code.isdigit()
        or rest[3:4] not in (b"", b" ")
    ):
        raise HttpError(f"malformed status line from the server: {status_line[:100]!r}")
    length: int | None = None
    codings: list[bytes] = []
    keep_alive = version == b"HTTP/1.1"
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or name.strip() != name:
            raise HttpError(f"malformed header line from the server: {line[:100]!r}")
        name, value = name.lower(), value.strip(b" \t")
        if name == b"content-length":
            if not value.isdigit() or (length is not None and int(value) != length):
                raise HttpError(f"malformed Content-Length from the server: {value[:40]!r}")
            length = int(value)
        elif name == b"transfer-encoding":
            codings += [c.strip(b" \t") for c in value.lower().split(b",") if c.strip()]
        elif name == b"connection":
            tokens = [t.strip(b" \t") for t in value.lower().split(b",")]
            if b"close" in tokens:
                keep_alive = False
            elif b"keep-alive" in tokens:
                keep_alive = True
    if codings and codings != [b"chunked"]:
        raise HttpError(f"unsupported Transfer-Encoding from the server: {b', '.join(codings)!r}")
    return int(code), length, bool(codings), not keep_alive


@dataclass
class SimDevice:
    """One device identity; `api_url` and `root_der` are what the flasher would pin."""

    api_url: str
    root_der: bytes
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    timeout_s: float = 10.0

    # (key, public key, device id), computed once: a fleet asks for them several times per
    # onboarding. Kept with the key it was computed from, so a replaced key is never stale.
    _identity: tuple[ec.EllipticCurvePrivateKey, bytes, str] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def _ident(self) -> tuple[ec.EllipticCurvePrivateKey, bytes, str]:
        ident = self._identity
        if ident is None or ident[0] is not self.key:
            pub = pubkey_bytes(self.key.public_key())
            ident = self._identity = (self.key, pub, hashlib.sha256(pub).hexdigest())
        return ident

    @property
    def public_key(self) -> bytes:
        return self._ident()[1]

    @property
    def device_id(self) -> str:
        return self._ident()[2]

    @property
    def host(self) -> str:
        return urlsplit(self.api_url).hostname or ""

    def csv_line(self) -> str:
        return f"{self.device_id},{self.public_key.hex()}"

    # -- HTTPS -------------------------------------------------------------------------------
    def connection(self) -> HttpsConnection:
        """A TLS connection to the server with the pinned root; it opens on the first request
        and carries several (HTTP/1.1 keep-alive) until closed."""
        url = urlsplit(self.api_url)
        return HttpsConnection(
            url.hostname or "", url.port, _shared_root_context(self.root_der), self.timeout_s
        )

    def post(
        self,
        path: str,
        body: dict[str, Any] | bytes,
        conn: HttpsConnection | None = None,
    ) -> ApiResponse:
        """One request, on `conn` if given (left open), else on a connection of its own."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        if conn is not None:
            status, raw = conn.request("POST", path, data)
        else:
            with self.connection() as own:
                status, raw = own.request("POST", path, data)
        return ApiResponse(status, json.loads(raw) if raw else {})

    def hello(
        self,
        *,
        public_key: bytes | None = None,
        device_id: str | None = None,
        conn: HttpsConnection | None = None,
    ) -> ApiResponse:
        pub = public_key if public_key is not None else self.public_key
        return self.post(
            "/v1/onboard/hello",
            {"device_id": device_id or self.device_id, "public_key": pub.hex()},
            conn,
        )

    def sign(self, challenge: bytes, host: str | None = None, ota_key: bytes = b"") -> bytes:
        """The proof's signature (docs/protocol.md); an OTA key sent in the proof ends the
        signed input."""
        message = (
            DOMAIN_LABEL
            + challenge
            + self.device_id.encode()
            + b"\x00"
            + (self.host if host is None else host).encode()
            + ota_key
        )
        r, s = decode_dss_signature(self.key.sign(message, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def proof_body(
        self,
        hello: ApiResponse,
        *,
        sign_host: str | None = None,
        signature: bytes | None = None,
        csr_key: ec.EllipticCurvePrivateKey | None = None,
        csr_subject: str | None = None,
        csr_der: bytes | None = None,
        ota_key: bytes | None = None,
    ) -> dict[str, Any]:
        """The proof for a hello answer; each keyword replaces one honest part with another.
        `ota_key` (an uncompressed P-256 point) is sent and signed, as an OTA-capable agent's."""
        challenge = bytes.fromhex(hello.body["challenge"])
        sig = (
            signature if signature is not None else self.sign(challenge, sign_host, ota_key or b"")
        )
        if csr_der is None:
            csr_der = make_csr(csr_key or self.key, csr_subject or self.device_id)
        body = {
            "challenge_id": hello.body["challenge_id"],
            "signature": sig.hex(),
            "csr_b64": base64.b64encode(csr_der).decode(),
        }
        if ota_key is not None:
            body["ota_key"] = ota_key.hex()
        return body

    def proof(self, body: dict[str, Any], conn: HttpsConnection | None = None) -> ApiResponse:
        return self.post("/v1/onboard/proof", body, conn)

    def onboard(self, ota_key: bytes | None = None) -> ApiResponse:
        """hello + proof, honestly, over one TLS connection; raises if hello is refused."""
        conn = self.connection()
        try:
            h = self.hello(conn=conn)
            if h.status != 200:
                raise OnboardFailed(h)
            return self.proof(self.proof_body(h, ota_key=ota_key), conn)
        finally:
            conn.close()

    # -- MQTT --------------------------------------------------------------------------------
    def mqtt_connect(
        self,
        answer: ApiResponse,
        workdir: Path | None = None,
        *,
        client_id: str | None = None,
        clean_session: bool = True,
    ) -> mqtt.Client:
        """Connect to the broker of a proof answer with the issued certificate (mTLS), as
        `client_id` (default: the device ID). Whether the broker resumed a stored session is
        in `session_present(client)`."""
        b = answer.body
        work = Path(workdir or tempfile.mkdtemp(prefix="qlink-sim-"))
        certs = [base64.b64decode(b["certificate_b64"])] + [
            base64.b64decode(c) for c in b["chain_b64"]
        ]
        cert_pem = b"".join(
            x509.load_der_x509_certificate(c).public_bytes(serialization.Encoding.PEM)
            for c in certs
        )
        (work / "cert.pem").write_bytes(cert_pem)
        key_path = work / "key.pem"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(
                self.key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        ctx = root_context(base64.b64decode(b["broker"]["ca_b64"]))
        ctx.load_cert_chain(str(work / "cert.pem"), str(key_path))
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.device_id if client_id is None else client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        client.tls_set_context(ctx)
        connected = threading.Event()
        result: list[ReasonCode] = []

        def on_connect(
            c: mqtt.Client, _u: object, flags: mqtt.ConnectFlags, rc: ReasonCode, _p: object
        ) -> None:
            c.user_data_set({"session_present": flags.session_present})
            result.append(rc)
            connected.set()

        client.on_connect = on_connect
        client.connect(b["broker"]["host"], int(b["broker"]["port"]), keepalive=30)
        client.loop_start()
        if not connected.wait(self.timeout_s) or result[0].is_failure:
            stop_client(client)  # a refused client must not live on, nor its TLS socket
            raise ConnectionError(
                f"broker refused device {self.device_id[:12]}: {result or 'timeout'}"
            )
        return client


def stop_client(client: mqtt.Client) -> None:
    """Disconnect `client`, stop its network thread and close its socket. paho 2.2's `loop_stop`
    reads the thread twice, and a thread that ends on its own after the disconnect clears it in
    between (eclipse-paho/paho.mqtt.python#872): an AttributeError then means it has stopped.
    A refused client's TLS socket can outlive its loop; left to the garbage collector, it is a
    ResourceWarning in whatever runs next."""
    client.disconnect()
    try:
        client.loop_stop()
    except AttributeError:
        pass
    sock = client.socket()
    if sock is not None:
        sock.close()


def session_present(client: mqtt.Client) -> bool:
    """Whether the broker's CONNACK for `client`'s last connection resumed a stored session."""
    data = client.user_data_get()
    return bool(isinstance(data, dict) and data.get("session_present"))


class OnboardFailed(Exception):
    def __init__(self, response: ApiResponse) -> None:
        super().__init__(response)
        self.response = response

    def __str__(self) -> str:
        return f"onboarding refused: HTTP {self.response.status} {self.response.body}"


def publish(
    client: mqtt.Client, topic: str, payload: dict[str, Any] | bytes, timeout_s: float = 5.0
) -> None:
    """Publish at QoS 1 and wait for the broker's PUBACK (sent even when an ACL drops it)."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    info = client.publish(topic, data, qos=1)
    info.wait_for_publish(timeout_s)
    if not info.is_published():
        raise TimeoutError(f"no PUBACK for {topic} within {timeout_s} s")
