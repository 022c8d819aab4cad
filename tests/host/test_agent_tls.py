"""The device's HTTPS client (firmware/agent/https.py, running in MicroPython) against real TLS
servers on loopback: it must verify the chain to the pinned root and the host name, and it must
never fall back to plaintext."""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hil import unixport

NOW = datetime.datetime.now(datetime.UTC)


@dataclass
class Pki:
    root_der: bytes
    cert_pem: Path
    key_pem: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


Signer = tuple[ec.EllipticCurvePrivateKey, x509.Certificate]


def _ca(cn: str, parent: Signer | None = None) -> Signer:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(parent[1].subject if parent else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(parent[0] if parent else key, hashes.SHA256())
    )
    return key, cert


def make_pki(tmp: Path, san: str, tag: str) -> Pki:
    """The platform's shape: root -> issuing CA -> server leaf for `san`; the server sends
    leaf + issuing CA, the device pins only the root."""
    root = _ca(f"qlink test root {tag}")
    issuing_key, issuing = _ca(f"qlink test issuing CA {tag}", root)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(san))
        .issuer_name(issuing.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
        .sign(issuing_key, hashes.SHA256())
    )
    cert_pem = tmp / f"{tag}-leaf.pem"
    key_pem = tmp / f"{tag}-leaf.key"
    cert_pem.write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM)
        + issuing.public_bytes(serialization.Encoding.PEM)
    )
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_pem.chmod(0o600)
    return Pki(root[1].public_bytes(serialization.Encoding.DER), cert_pem, key_pem)


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict[str, object]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append({"path": self.path, "headers": dict(self.headers), "body": body})
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            data = json.dumps({"echo": json.loads(body), "chunked": True}).encode()
            for i in range(0, len(data), 7):
                part = data[i : i + 7]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        out = json.dumps({"echo": json.loads(body), "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class Server:
    port: int
    seen: list[dict[str, object]]


def _serve(pki: Pki | None) -> Iterator[Server]:
    seen: list[dict[str, object]] = []
    handler = type("Handler", (_Echo,), {"seen": seen})
    httpd = HTTPServer(("127.0.0.1", 0), handler)
    if pki is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki.cert_pem, pki.key_pem)
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield Server(httpd.server_address[1], seen)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path, "localhost", "a")


@pytest.fixture
def other_pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path, "localhost", "b")


@pytest.fixture
def server(pki: Pki) -> Iterator[Server]:
    yield from _serve(pki)


def device_post(
    tmp: Path, host: str, port: int, root_der: bytes, path: str, obj: object, timeout_ms: int = 5000
) -> dict[str, object]:
    """Runs the firmware HTTPS client in MicroPython (RP2040 heap budget); returns what it saw."""
    ca = tmp / "pinned-ca.der"
    ca.write_bytes(root_der)
    code = f"""
import json
from agent import https
from agent.errors import LinkError
c = https.Client({host!r}, {port}, open({str(ca)!r}, "rb").read(), "", {timeout_ms})
try:
    st, doc = c.post({path!r}, json.loads({json.dumps(obj)!r}))
    print("RESULT " + json.dumps({{"status": st, "doc": doc}}))
except LinkError as e:
    print("RESULT " + json.dumps({{"error": "LinkError", "msg": str(e)}}))
"""
    proc = unixport.run_code(code, heap=unixport.HEAP_RP2040, timeout=60)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, object] = json.loads(line[7:])
            return result
    raise AssertionError(f"no result from MicroPython:\n{proc.stdout}\n{proc.stderr}")


def test_post_succeeds_when_pinned_to_the_right_root(tmp_path: Path, pki: Pki, server: Server):
    got = device_post(tmp_path, "localhost", server.port, pki.root_der, "/v1/x", {"a": [1, "b"]})
    assert got == {"status": 200, "doc": {"echo": {"a": [1, "b"]}, "path": "/v1/x"}}
    [req] = server.seen
    headers = req["headers"]
    assert isinstance(headers, dict)
    assert headers["Host"] == f"localhost:{server.port}"
    assert headers["Content-Type"] == "application/json"
    assert req["body"] == b'{"a": [1, "b"]}'


def test_chunked_answer_is_reassembled(tmp_path: Path, pki: Pki, server: Server):
    got = device_post(tmp_path, "localhost", server.port, pki.root_der, "/chunked", {"k": "v" * 50})
    assert got == {"status": 200, "doc": {"echo": {"k": "v" * 50}, "chunked": True}}


def test_refuses_a_server_chained_to_another_root(tmp_path: Path, other_pki: Pki, server: Server):
    got = device_post(tmp_path, "localhost", server.port, other_pki.root_der, "/v1/x", {"s": 1})
    assert got["error"] == "LinkError"
    assert "not correctly signed by the trusted CA" in str(got["msg"])
    assert server.seen == []  # the request never left the device


def test_refuses_a_host_name_mismatch(tmp_path: Path, pki: Pki, server: Server):
    # Same server, right root, but reached as 127.0.0.1: the certificate names only localhost.
    got = device_post(tmp_path, "127.0.0.1", server.port, pki.root_der, "/v1/x", {"s": 1})
    assert got["error"] == "LinkError"
    assert "CN" in str(got["msg"]) or "name" in str(got["msg"]).lower()
    assert server.seen == []


def test_refuses_a_certificate_for_another_name(tmp_path: Path):
    wrong = make_pki(tmp_path, "server.other.example", "c")
    for srv in _serve(wrong):
        got = device_post(tmp_path, "localhost", srv.port, wrong.root_der, "/v1/x", {"s": 1})
        assert got["error"] == "LinkError"
        assert srv.seen == []


def test_plaintext_server_is_an_error_not_data(tmp_path: Path, pki: Pki):
    for srv in _serve(None):
        got = device_post(tmp_path, "localhost", srv.port, pki.root_der, "/v1/x", {"s": 1})
        assert got["error"] == "LinkError"
        assert "doc" not in got
        assert srv.seen == []  # no plaintext request was ever parsed by the server


def test_silent_server_times_out_as_link_error(tmp_path: Path, pki: Pki):
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    try:
        t0 = time.monotonic()
        got = device_post(
            tmp_path, "localhost", lsock.getsockname()[1], pki.root_der, "/v1/x", {}, 1000
        )
        assert got["error"] == "LinkError"
        assert time.monotonic() - t0 < 20
    finally:
        lsock.close()


def test_closed_port_is_link_error(tmp_path: Path, pki: Pki):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    got = device_post(tmp_path, "localhost", port, pki.root_der, "/v1/x", {})
    assert got["error"] == "LinkError"


def test_uvicorn_fastapi_answers_and_refusals_parse(tmp_path: Path, pki: Pki):
    """The server runs FastAPI on uvicorn: its framing (Content-Length) and its JSON error
    bodies must reach the device intact, 4xx included."""
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()

    @app.post("/v1/onboard/hello")
    async def hello(body: dict[str, object]) -> JSONResponse:
        if body.get("device_id") != "ok":
            return JSONResponse(
                {"error": "not_registered", "detail": "register the device first"}, 403
            )
        return JSONResponse({"challenge_id": "0" * 32, "challenge": "1" * 64, "expires": 5})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app,
        ssl_certfile=str(pki.cert_pem),
        ssl_keyfile=str(pki.key_pem),
        log_level="warning",
        lifespan="off",
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not srv.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        port = sock.getsockname()[1]
        ok = device_post(
            tmp_path, "localhost", port, pki.root_der, "/v1/onboard/hello", {"device_id": "ok"}
        )
        assert ok == {
            "status": 200,
            "doc": {"challenge_id": "0" * 32, "challenge": "1" * 64, "expires": 5},
        }
        refused = device_post(
            tmp_path, "localhost", port, pki.root_der, "/v1/onboard/hello", {"device_id": "nope"}
        )
        assert refused == {
            "status": 403,
            "doc": {"error": "not_registered", "detail": "register the device first"},
        }
    finally:
        srv.should_exit = True
        thread.join(10)
        sock.close()
