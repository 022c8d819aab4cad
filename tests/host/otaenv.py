"""The server's half of an update for the device tests of agent.ota (CPython, not MicroPython):
a release built with pyca/cryptography exactly as docs/ota.md writes it (manifest, signature,
release certificate, encrypted payload, a wrap of the content key for one device's OTA key), an
HTTPS server for the device API's two OTA routes with byte ranges, and a runner for a device
script on the Unix port at the RP2040 heap. The device checks what another implementation
made, never its own output."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.padding import PKCS7
from cryptography.x509.oid import NameOID

from hil import unixport

FIRMWARE_EKU = x509.ObjectIdentifier("2.25.230702443920874563719838064095364702917")
COMMAND_EKU = x509.ObjectIdentifier("2.25.311889229853575044542618327131203868764")
DER = serialization.Encoding.DER
NOW = dt.datetime.now(dt.UTC)
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

Signer = tuple[ec.EllipticCurvePrivateKey, x509.Certificate]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(DER.X962, serialization.PublicFormat.UncompressedPoint)


def root_ca(cn: str = "qlink ota test root") -> Signer:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def leaf(
    issuer: Signer,
    cn: str,
    ekus: list[x509.ObjectIdentifier] | None,
    san: str | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> Signer:
    """A certificate issued by `issuer`, with the extended key usages given (None: none)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer[1].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if ekus is not None:
        b = b.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
    if san is not None:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
    return key, b.sign(issuer[0], hashes.SHA256())


@dataclass
class Pki:
    root: Signer
    release: Signer  # root-signed, firmware-signing usage only
    tls_chain: Path  # the HTTPS server's certificate (localhost, root-signed) and key
    tls_key: Path

    @property
    def root_der(self) -> bytes:
        return self.root[1].public_bytes(DER)


def make_pki(tmp: Path) -> Pki:
    root = root_ca()
    release = leaf(root, "qlink release", [FIRMWARE_EKU])
    tls_key, tls_cert = leaf(root, "localhost", [x509.ExtendedKeyUsageOID.SERVER_AUTH], "localhost")
    chain = tmp / "tls.pem"
    key = tmp / "tls.key"
    chain.write_bytes(tls_cert.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        tls_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Pki(root, release, chain, key)


def manifest_bytes(
    version: str, board: str, files: list[tuple[str, bytes]], min_version: str = "0.0.0"
) -> bytes:
    """docs/ota.md: compact JSON, keys in this order, files sorted by path."""
    doc = {
        "v": 1,
        "version": version,
        "min_version": min_version,
        "board": board,
        "files": [
            {"path": p, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()}
            for p, b in sorted(files)
        ],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def sign_manifest(key: ec.EllipticCurvePrivateKey, manifest: bytes) -> bytes:
    der = key.sign(b"qlink-ota-v1\x00" + manifest, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _hkdf(ikm: bytes, salt: bytes | None, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 64, salt, info).derive(ikm)


def content_keys(ck: bytes) -> bytes:
    """k_enc || k_mac = HKDF-SHA256(CK, salt empty, "qlink-ota-content-v1", 64)."""
    return _hkdf(ck, None, b"qlink-ota-content-v1")


def encrypt_payload(release_id: str, plaintext: bytes, ck: bytes) -> bytes:
    keys = content_keys(ck)
    iv = os.urandom(16)
    padder = PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    enc = Cipher(algorithms.AES(keys[:32]), modes.CBC(iv)).encryptor()
    ct = enc.update(padded) + enc.finalize()
    tag = hmac.new(
        keys[32:],
        b"qlink-ota-payload-v1\x00" + release_id.encode() + b"\x00" + iv + ct,
        hashlib.sha256,
    ).digest()
    return iv + ct + tag


def wrap(ck: bytes, release_id: str, device_id: str, ota_pub: bytes) -> dict[str, str]:
    """docs/ota.md "Wrapping the content key for one device"."""
    e = ec.generate_private_key(ec.SECP256R1())
    peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), ota_pub)
    z = e.exchange(ec.ECDH(), peer)
    kek = _hkdf(
        z,
        hashlib.sha256(release_id.encode()).digest(),
        b"qlink-ota-wrap-v1\x00" + device_id.encode(),
    )
    epk = point(e.public_key())
    key = bytes(a ^ b for a, b in zip(ck, kek[:32], strict=True))
    tag = hmac.new(kek[32:], epk + key, hashlib.sha256).digest()
    return {"epk": epk.hex(), "key": key.hex(), "tag": tag.hex()}


@dataclass
class Release:
    id: str
    manifest: bytes
    signature: bytes
    signer_der: bytes
    payload: bytes
    ck: bytes
    files: list[tuple[str, bytes]]

    def head(self, device_id: str, ota_pub: bytes) -> dict[str, object]:
        import base64

        return {
            "release": self.id,
            "manifest": self.manifest.decode(),
            "signature": self.signature.hex(),
            "signer_b64": base64.b64encode(self.signer_der).decode(),
            "payload_size": len(self.payload),
            "wrap": wrap(self.ck, self.id, device_id, ota_pub),
        }


def build(
    signer: Signer,
    files: list[tuple[str, bytes]],
    version: str = "0.2.0",
    board: str = "unix",
    min_version: str = "0.1.0",
    manifest: bytes | None = None,
) -> Release:
    """A release as `qlink ota build` + `publish` make it. `manifest`: signed instead of the
    true one (a release key that signed something else)."""
    rid = f"{board}-{version}"
    files = sorted(files)
    m = manifest if manifest is not None else manifest_bytes(version, board, files, min_version)
    ck = os.urandom(32)
    plaintext = b"".join(b for _, b in files)
    return Release(
        rid,
        m,
        sign_manifest(signer[0], m),
        signer[1].public_bytes(DER),
        encrypt_payload(rid, plaintext, ck),
        ck,
        files,
    )


def sample_files(n: int = 64, big: int = 6000) -> list[tuple[str, bytes]]:
    """n files (one of `big` bytes, one empty, the rest small) in a few folders, like a tree."""
    out = [("agent/big.mpy", os.urandom(big)), ("agent/empty.py", b"")]
    for i in range(n - 2):
        folder = ("agent", "qdid", "lib/x")[i % 3]
        out.append((f"{folder}/m{i:02d}.mpy", os.urandom(40 + (i * 37) % 200)))
    return sorted(out)


@dataclass
class OtaServer:
    """The device API's OTA routes over TLS. heads: release ID -> head answer (or (status,
    body)); payloads: release ID -> bytes. cut_after: payload bytes after which the first
    payload answer stops (the connection closes mid-body). Counts payload bytes sent."""

    heads: dict[str, object]
    payloads: dict[str, bytes]
    cut_after: int = -1
    served: int = 0
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, Range header)
    port: int = 0


def _handler(srv: OtaServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _json(self, status: int, doc: object) -> None:
            out = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def do_GET(self) -> None:
            srv.requests.append((self.path, self.headers.get("Range", "")))
            parts = self.path.split("?")[0].split("/")
            if len(parts) != 5 or parts[:3] != ["", "v1", "ota"]:
                return self._json(404, {"error": "not_found", "detail": ""})
            rid, what = parts[3], parts[4]
            if what == "head":
                head = srv.heads.get(rid)
                if head is None:
                    return self._json(404, {"error": "unknown_release", "detail": ""})
                if isinstance(head, tuple):
                    return self._json(head[0], head[1])
                return self._json(200, head)
            data = srv.payloads.get(rid)
            if what != "payload" or data is None:
                return self._json(404, {"error": "unknown_release", "detail": ""})
            start, end = 0, len(data) - 1
            rng = self.headers.get("Range")
            if rng:
                first, _, last = rng.removeprefix("bytes=").partition("-")
                start = int(first)
                end = int(last) if last else end
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
            body = data[start : end + 1]
            self.send_response(206 if rng else 200)
            if rng:
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if srv.cut_after >= 0:
                body = body[: srv.cut_after]
                srv.cut_after = -1
                self.close_connection = True
            for i in range(0, len(body), 700):  # several TLS records, as a real server sends
                self.wfile.write(body[i : i + 700])
                srv.served += len(body[i : i + 700])
            return None

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@contextmanager
def serve(pki: Pki, srv: OtaServer) -> Iterator[OtaServer]:
    httpd = HTTPServer(("127.0.0.1", 0), _handler(srv))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.tls_chain, pki.tls_key)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    srv.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def run_device(code: str, cwd: Path, heap: int = unixport.HEAP_RP2040) -> dict[str, object]:
    """Runs `code` on the Unix port in `cwd` (the board's root) with the compiled firmware;
    returns the JSON it printed after "RESULT "."""
    # The board's root holds running files (agent/...) that must not shadow the firmware under
    # test: imports come from the compiled tree only.
    code = "import sys\nwhile '' in sys.path: sys.path.remove('')\n" + code
    proc = unixport.run(
        ["-c", code], heap=heap, cwd=cwd, path=[unixport.compiled_firmware()], timeout=120
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, object] = json.loads(line[7:])
            result["_out"] = proc.stdout + proc.stderr
            return result
    raise AssertionError(f"no result from MicroPython:\n{proc.stdout}\n{proc.stderr}")
