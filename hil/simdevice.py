"""A simulated device in CPython: real P-256 keys, real TLS with the pinned root, the real
onboarding protocol, and an MQTT connection with the issued certificate.

Tests use the tamper hooks of `proof_body` to send what a broken or hostile device would.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import http.client
import json
import os
import socket
import ssl
import tempfile
import threading
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
    return _root_context(root_der)


def _root_context(root_der: bytes) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name
    ctx.load_verify_locations(cadata=root_der)
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


class _NoDelayHTTPS(http.client.HTTPSConnection):
    """http.client sends a request's head and body in two writes: without TCP_NODELAY the body
    waits for the server's delayed ACK of the head (about 40 ms per request on Linux)."""

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass
class SimDevice:
    """One device identity; `api_url` and `root_der` are what the flasher would pin."""

    api_url: str
    root_der: bytes
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    timeout_s: float = 10.0

    @property
    def public_key(self) -> bytes:
        return pubkey_bytes(self.key.public_key())

    @property
    def device_id(self) -> str:
        return hashlib.sha256(self.public_key).hexdigest()

    @property
    def host(self) -> str:
        return urlsplit(self.api_url).hostname or ""

    def csv_line(self) -> str:
        return f"{self.device_id},{self.public_key.hex()}"

    # -- HTTPS -------------------------------------------------------------------------------
    def connection(self) -> http.client.HTTPSConnection:
        """A TLS connection to the server with the pinned root; it opens on the first request
        and carries several (HTTP/1.1 keep-alive) until closed."""
        url = urlsplit(self.api_url)
        return _NoDelayHTTPS(
            url.hostname or "",
            url.port,
            timeout=self.timeout_s,
            context=_shared_root_context(self.root_der),
        )

    def post(
        self,
        path: str,
        body: dict[str, Any] | bytes,
        conn: http.client.HTTPSConnection | None = None,
    ) -> ApiResponse:
        """One request, on `conn` if given (left open), else on a connection of its own."""
        own = conn is None
        c = self.connection() if conn is None else conn
        try:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            c.request("POST", path, data, {"Content-Type": "application/json"})
            resp = c.getresponse()
            raw = resp.read()
            return ApiResponse(resp.status, json.loads(raw) if raw else {})
        finally:
            if own:
                c.close()

    def hello(
        self,
        *,
        public_key: bytes | None = None,
        device_id: str | None = None,
        conn: http.client.HTTPSConnection | None = None,
    ) -> ApiResponse:
        pub = public_key if public_key is not None else self.public_key
        return self.post(
            "/v1/onboard/hello",
            {"device_id": device_id or self.device_id, "public_key": pub.hex()},
            conn,
        )

    def sign(self, challenge: bytes, host: str | None = None) -> bytes:
        message = (
            DOMAIN_LABEL
            + challenge
            + self.device_id.encode()
            + b"\x00"
            + (self.host if host is None else host).encode()
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
    ) -> dict[str, Any]:
        """The proof for a hello answer; each keyword replaces one honest part with another."""
        challenge = bytes.fromhex(hello.body["challenge"])
        sig = signature if signature is not None else self.sign(challenge, sign_host)
        if csr_der is None:
            csr_der = make_csr(csr_key or self.key, csr_subject or self.device_id)
        return {
            "challenge_id": hello.body["challenge_id"],
            "signature": sig.hex(),
            "csr_b64": base64.b64encode(csr_der).decode(),
        }

    def proof(
        self, body: dict[str, Any], conn: http.client.HTTPSConnection | None = None
    ) -> ApiResponse:
        return self.post("/v1/onboard/proof", body, conn)

    def onboard(self) -> ApiResponse:
        """hello + proof, honestly, over one TLS connection; raises if hello is refused."""
        conn = self.connection()
        try:
            h = self.hello(conn=conn)
            if h.status != 200:
                raise OnboardFailed(h)
            return self.proof(self.proof_body(h), conn)
        finally:
            conn.close()

    # -- MQTT --------------------------------------------------------------------------------
    def mqtt_connect(self, answer: ApiResponse, workdir: Path | None = None) -> mqtt.Client:
        """Connect to the broker of a proof answer with the issued certificate (mTLS)."""
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
        ctx = _root_context(base64.b64decode(b["broker"]["ca_b64"]))
        ctx.load_cert_chain(str(work / "cert.pem"), str(key_path))
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.device_id, protocol=mqtt.MQTTv311
        )
        client.tls_set_context(ctx)
        connected = threading.Event()
        result: list[ReasonCode] = []

        def on_connect(_c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
            result.append(rc)
            connected.set()

        client.on_connect = on_connect
        client.connect(b["broker"]["host"], int(b["broker"]["port"]), keepalive=30)
        client.loop_start()
        if not connected.wait(self.timeout_s) or result[0].is_failure:
            client.loop_stop()
            raise ConnectionError(
                f"broker refused device {self.device_id[:12]}: {result or 'timeout'}"
            )
        return client


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
