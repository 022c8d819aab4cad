"""The device's DER writer (`qdid.der`, running in MicroPython under 64 KiB) against OpenSSL and
pyca/cryptography: its PKCS#10 CSR must verify, its RFC 5915 key must load and match, and
MicroPython's `tls` must take that key with a certificate issued for the CSR and complete a
mutual-TLS handshake with it; its certificate reader must agree with `cryptography`.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from hil import unixport

SEED = b"qlink csr test seed"
UNICODE_CN = "d\u00e9vice \u2713"
NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)


@dataclass(frozen=True)
class DeviceOutput:
    d: int
    pub: bytes
    device_id: str
    csr: bytes
    csr_unicode: bytes
    key: bytes


def run_device(code: str, path: Path | None = None) -> str:
    proc = unixport.run_code(code, timeout=120, cwd=path, path=[unixport.compiled_firmware()])
    assert proc.returncode == 0, f"micropython failed:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def device() -> DeviceOutput:
    code = (
        "import json, hashlib\nfrom binascii import hexlify as h\nfrom qdid import p256, der\n"
        f"d = p256.scalar_from_seed({SEED!r})\n"
        "pub = p256.public_key(d)\n"
        "dev_id = h(hashlib.sha256(pub).digest()).decode()\n"
        "print(json.dumps({'d': '%064x' % d, 'pub': h(pub).decode(), 'id': dev_id,"
        " 'csr': h(der.csr(d, pub, dev_id)).decode(),"
        f" 'csr_u': h(der.csr(d, pub, {UNICODE_CN!r})).decode(),"
        " 'key': h(der.ec_private_key(d, pub)).decode()}))\n"
    )
    out = json.loads(run_device(code).strip().splitlines()[-1])
    return DeviceOutput(
        d=int(out["d"], 16),
        pub=bytes.fromhex(out["pub"]),
        device_id=out["id"],
        csr=bytes.fromhex(out["csr"]),
        csr_unicode=bytes.fromhex(out["csr_u"]),
        key=bytes.fromhex(out["key"]),
    )


def test_device_id_is_sha256_of_the_public_key(device: DeviceOutput) -> None:
    assert device.device_id == hashlib.sha256(device.pub).hexdigest()


def test_openssl_verifies_the_csr_self_signature(device: DeviceOutput, tmp_path: Path) -> None:
    path = tmp_path / "device.csr.der"
    path.write_bytes(device.csr)
    proc = subprocess.run(
        ["openssl", "req", "-inform", "DER", "-in", str(path), "-verify", "-noout"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verify OK" in proc.stdout + proc.stderr


def test_openssl_rejects_a_csr_with_a_flipped_signature_bit(
    device: DeviceOutput, tmp_path: Path
) -> None:
    bad = bytearray(device.csr)
    bad[-5] ^= 0x01  # inside s of the ECDSA-Sig-Value
    path = tmp_path / "bad.csr.der"
    path.write_bytes(bytes(bad))
    proc = subprocess.run(
        ["openssl", "req", "-inform", "DER", "-in", str(path), "-verify", "-noout"],
        capture_output=True,
        text=True,
        check=False,
    )
    # OpenSSL 3.0 `req -verify` exits 0 either way; the verdict is in its message.
    assert "verify failure" in proc.stdout + proc.stderr
    assert "verify OK" not in proc.stdout + proc.stderr
    assert not x509.load_der_x509_csr(bytes(bad)).is_signature_valid


def test_cryptography_accepts_the_csr_with_the_requested_subject(device: DeviceOutput) -> None:
    csr = x509.load_der_x509_csr(device.csr)
    assert csr.is_signature_valid
    assert csr.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
    assert list(csr.attributes) == []
    assert list(csr.extensions) == []
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cns] == [device.device_id]
    assert len(csr.subject.rdns) == 1
    assert cns[0]._type == x509.name._ASN1Type.UTF8String
    pub = csr.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    assert isinstance(pub.curve, ec.SECP256R1)
    assert (
        pub.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        == device.pub
    )


def test_csr_subject_may_be_any_utf8_name(device: DeviceOutput) -> None:
    csr = x509.load_der_x509_csr(device.csr_unicode)
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == UNICODE_CN


def test_sec1_key_loads_and_equals_cryptographys_own_encoding(device: DeviceOutput) -> None:
    key = serialization.load_der_private_key(device.key, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.private_numbers().private_value == device.d
    assert (
        key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        == device.pub
    )
    same = ec.derive_private_key(device.d, ec.SECP256R1()).private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert device.key == same


@dataclass(frozen=True)
class Issued:
    ca_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate
    cert: x509.Certificate


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@pytest.fixture(scope="module")
def issued(device: DeviceOutput) -> Issued:
    """A test CA and a client certificate issued for the device's CSR."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("qlink csr test CA"))
        .issuer_name(_name("qlink csr test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    csr = x509.load_der_x509_csr(device.csr)
    cert = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca_cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(minutes=5))
        .not_valid_after(NOW + datetime.timedelta(days=90, seconds=7))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Issued(ca_key, ca_cert, cert)


def test_device_reads_validity_subject_and_key_of_the_issued_certificate(
    device: DeviceOutput, issued: Issued, tmp_path: Path
) -> None:
    der_bytes = issued.cert.public_bytes(serialization.Encoding.DER)
    (tmp_path / "cert.der").write_bytes(der_bytes)
    code = (
        "import json\nfrom binascii import hexlify\nfrom qdid import x509\n"
        "c = open('cert.der', 'rb').read()\n"
        "print(json.dumps([x509.cert_not_after(c), x509.cert_subject_cn(c),"
        " hexlify(x509.cert_public_key(c)).decode()]))\n"
    )
    not_after, cn, pub = json.loads(run_device(code, tmp_path).strip().splitlines()[-1])
    assert not_after == int(issued.cert.not_valid_after_utc.timestamp())
    assert cn == device.device_id
    assert bytes.fromhex(pub) == device.pub


def _tls_server(
    tmp: Path, issued: Issued
) -> tuple[socket.socket, ssl.SSLContext, list[str | BaseException]]:
    """A loopback TLS server that requires a client certificate from the test CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(issued.ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(issued.ca_key, hashes.SHA256())
    )
    (tmp / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = tmp / "server.key"
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp / "server.pem", key_path)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(
        cadata=issued.ca_cert.public_bytes(serialization.Encoding.PEM).decode()
    )
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(60)  # a device that never connects ends the server thread
    return sock, ctx, []


@pytest.fixture
def mtls_server(tmp_path: Path, issued: Issued) -> Iterator[tuple[int, list[str | BaseException]]]:
    sock, ctx, seen = _tls_server(tmp_path, issued)

    def serve() -> None:
        try:
            conn, _ = sock.accept()
            conn.settimeout(30)
            with ctx.wrap_socket(conn, server_side=True) as tls_conn:
                peer = tls_conn.getpeercert(binary_form=True)
                assert peer is not None
                subject = x509.load_der_x509_certificate(peer).subject
                cn = str(subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
                seen.append(cn)
                tls_conn.sendall(b"hello " + cn.encode())
        except BaseException as e:  # reported by the test, not lost in the thread
            seen.append(e)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1], seen
    sock.close()
    thread.join(timeout=30)


def test_tls_takes_the_sec1_key_and_completes_mutual_tls(
    device: DeviceOutput,
    issued: Issued,
    tmp_path: Path,
    mtls_server: tuple[int, list[str | BaseException]],
) -> None:
    port, seen = mtls_server
    (tmp_path / "cert.der").write_bytes(issued.cert.public_bytes(serialization.Encoding.DER))
    (tmp_path / "ca.der").write_bytes(issued.ca_cert.public_bytes(serialization.Encoding.DER))
    code = (
        "import socket, tls\nfrom qdid import p256, der\n"
        f"d = p256.scalar_from_seed({SEED!r})\n"
        "ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)\n"
        "ctx.verify_mode = tls.CERT_REQUIRED\n"
        "ctx.load_verify_locations(open('ca.der', 'rb').read())\n"
        "key = der.ec_private_key(d, p256.public_key(d))\n"
        "ctx.load_cert_chain(open('cert.der', 'rb').read(), key)\n"
        "s = socket.socket()\n"
        f"s.connect(socket.getaddrinfo('127.0.0.1', {port})[0][-1])\n"
        "c = ctx.wrap_socket(s, server_hostname='localhost')\n"
        "print(c.read(200).decode())\n"
        "c.close()\n"
    )
    out = run_device(code, tmp_path)
    assert seen == [device.device_id]
    assert out.strip().splitlines()[-1] == "hello " + device.device_id


def test_tls_rejects_a_truncated_key(device: DeviceOutput, issued: Issued, tmp_path: Path) -> None:
    (tmp_path / "cert.der").write_bytes(issued.cert.public_bytes(serialization.Encoding.DER))
    code = (
        "import tls\n"
        "ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)\n"
        f"key = bytes.fromhex('{device.key.hex()}')[:-1]\n"
        "try:\n"
        "    ctx.load_cert_chain(open('cert.der', 'rb').read(), key)\n"
        "    print('accepted')\n"
        "except ValueError:\n"
        "    print('rejected')\n"
    )
    assert run_device(code, tmp_path).strip().splitlines()[-1] == "rejected"
