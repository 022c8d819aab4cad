"""The device MQTT client (firmware/agent/mqtt.py + tlslink, running in MicroPython) against a
real Mosquitto with a mutual-TLS listener: client certificate + SEC1 key, CN as user name,
QoS 1 publishes received in order, byte for byte, by a paho-mqtt subscriber on the host."""

from __future__ import annotations

import contextlib
import datetime
import getpass
import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hil import unixport

MOSQUITTO = "/usr/sbin/mosquitto"
NOW = datetime.datetime.now(datetime.UTC)
DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM

pytestmark = pytest.mark.skipif(
    not Path(MOSQUITTO).exists() and not shutil.which("mosquitto"),
    reason="mosquitto is not installed; run: make setup",
)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class Ca:
    """A root CA, or with `parent` an issuing CA under it (the platform's shape: root ->
    issuing -> leaves; the device pins the root, servers send leaf + issuing)."""

    def __init__(self, cn: str, parent: Ca | None = None) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(parent.cert.subject if parent else _name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(days=1))
            .not_valid_after(NOW + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(parent.key if parent else self.key, hashes.SHA256())
        )

    def chain_pem(self, leaf: x509.Certificate) -> bytes:
        return leaf.public_bytes(PEM) + self.cert.public_bytes(PEM)

    def issue(
        self, cn: str, san: str | None = None
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(days=1))
            .not_valid_after(NOW + datetime.timedelta(days=30))
        )
        if san:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
        return key, b.sign(self.key, hashes.SHA256())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


def _write_secret(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


@dataclass
class Device:
    device_id: str
    cert_der: Path
    key_der: Path


def make_device(ca: Ca, tmp: Path, tag: str) -> Device:
    """A device key pair the way the firmware holds it: SEC1 DER key, CN = SHA-256(pubkey)."""
    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key().public_bytes(DER.X962, serialization.PublicFormat.UncompressedPoint)
    device_id = hashlib.sha256(pub).hexdigest()
    _, cert = ca.issue(device_id)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(device_id))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .sign(ca.key, hashes.SHA256())
    )
    cert_der = tmp / f"{tag}-cert.der"
    cert_der.write_bytes(cert.public_bytes(DER))
    sec1 = key.private_bytes(
        DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    return Device(device_id, cert_der, _write_secret(tmp / f"{tag}-key.der", sec1))


@dataclass
class Broker:
    port: int
    ca: Ca  # issuing CA: signs the broker's and the devices' certificates
    root: Ca
    root_der: Path
    root_pem: Path
    observer_cert: Path
    observer_key: Path
    log: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"mosquitto exited:\n{_text(log)}{_text(log.with_suffix('.stderr'))}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"mosquitto did not listen on {port}:\n{_text(log)}")


def _text(p: Path) -> str:
    return p.read_text() if p.exists() else ""


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    root = Ca("qlink test root")
    ca = Ca("qlink test issuing CA", root)
    root_pem = tmp_path / "root.pem"
    root_pem.write_bytes(root.cert.public_bytes(PEM))
    root_der = tmp_path / "root.der"
    root_der.write_bytes(root.cert.public_bytes(DER))
    bundle = tmp_path / "bundle.pem"  # what the broker trusts for client certificates
    bundle.write_bytes(ca.cert.public_bytes(PEM) + root.cert.public_bytes(PEM))
    skey, scert = ca.issue("localhost", "localhost")
    (tmp_path / "broker.pem").write_bytes(ca.chain_pem(scert))
    _write_secret(tmp_path / "broker.key", _pem_key(skey))
    okey, ocert = ca.issue("observer")
    (tmp_path / "observer.pem").write_bytes(ca.chain_pem(ocert))
    _write_secret(tmp_path / "observer.key", _pem_key(okey))
    port = _free_port()
    log = tmp_path / "mosquitto.log"
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        # `user`: started as root, mosquitto would switch to its own user and lose access to
        # this test's private temp directory.
        f"""persistence false
user {getpass.getuser()}
log_dest file {log}
log_type all
listener {port} 127.0.0.1
cafile {bundle}
certfile {tmp_path / "broker.pem"}
keyfile {tmp_path / "broker.key"}
require_certificate true
use_identity_as_username true
tls_version tlsv1.2
"""
    )
    err = (tmp_path / "mosquitto.stderr").open("wb")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=err, stderr=err)
    try:
        _wait_listening(port, proc, log)
        yield Broker(
            port,
            ca,
            root,
            root_der,
            root_pem,
            tmp_path / "observer.pem",
            tmp_path / "observer.key",
            log,
        )
    finally:
        proc.terminate()
        proc.wait(10)
        err.close()


class Subscriber:
    """paho-mqtt on the host, over mTLS with the observer certificate."""

    def __init__(self, broker: Broker, topic: str) -> None:
        self.messages: list[tuple[str, bytes, int]] = []
        self.done = threading.Event()
        self.subscribed = threading.Event()
        self.expect = 0
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="observer")
        c.tls_set(
            ca_certs=str(broker.root_pem),
            certfile=str(broker.observer_cert),
            keyfile=str(broker.observer_key),
        )
        c.on_connect = lambda cl, ud, fl, rc, pr: cl.subscribe(topic, qos=1)
        c.on_subscribe = lambda cl, ud, mid, rcs, pr: self.subscribed.set()
        c.on_message = self._on_message
        c.connect("localhost", broker.port)
        c.loop_start()
        self.client = c
        assert self.subscribed.wait(10), "observer could not subscribe"

    def _on_message(self, cl: paho.Client, ud: object, msg: paho.MQTTMessage) -> None:
        self.messages.append((msg.topic, msg.payload, msg.qos))
        if len(self.messages) >= self.expect:
            self.done.set()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def run_device(code: str, heap: int = unixport.HEAP_RP2040) -> list[str]:
    proc = unixport.run_code(code, heap=heap, timeout=60)
    out = proc.stdout.splitlines()
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    return out


def test_device_publishes_qos1_over_mtls_and_subscriber_gets_exact_payloads(
    tmp_path: Path, broker: Broker
):
    dev = make_device(broker.ca, tmp_path, "dev")
    topic = f"qlink/acme/{dev.device_id}/telemetry"
    payloads = [json.dumps({"seq": i, "fill": "x" * (i * 40)}).encode() for i in range(1, 9)]
    sub = Subscriber(broker, topic)
    sub.expect = len(payloads)
    code = f"""
import gc, micropython
from agent import tlslink
from agent.mqtt import MQTTClient
rd = lambda p: open(p, "rb").read()
gc.collect()
s, raw = tlslink.connect("localhost", {broker.port}, rd({str(broker.root_der)!r}), 5000,
                         rd({str(dev.cert_der)!r}), rd({str(dev.key_der)!r}))
c = MQTTClient({dev.device_id!r}, 30, 5000)
print("PRESENT", c.connect(s))
for p in {payloads!r}:
    print("PID", c.publish({topic!r}, p, 1))
c.ping()
c.disconnect()
print("PEAK", micropython.mem_peak())
"""
    try:
        out = run_device(code)
        assert sub.done.wait(10), f"subscriber got {len(sub.messages)} of {len(payloads)}"
    finally:
        sub.close()
    assert out[0] == "PRESENT False"
    assert [line for line in out if line.startswith("PID")] == [f"PID {i}" for i in range(1, 9)]
    assert sub.messages == [(topic, p, 1) for p in payloads]
    # The broker took the certificate CN (the device ID) as the user name.
    assert f"u'{dev.device_id}'" in broker.log.read_text()


def test_device_certificate_from_another_ca_is_refused(tmp_path: Path, broker: Broker):
    rogue = make_device(Ca("rogue root"), tmp_path, "rogue")
    code = f"""
from agent import tlslink
from agent.mqtt import MQTTClient
from agent.errors import LinkError
rd = lambda p: open(p, "rb").read()
try:
    s, raw = tlslink.connect("localhost", {broker.port}, rd({str(broker.root_der)!r}), 5000,
                             rd({str(rogue.cert_der)!r}), rd({str(rogue.key_der)!r}))
    c = MQTTClient({rogue.device_id!r})
    c.connect(s)
    c.publish("qlink/acme/x/telemetry", b"leak", 1)
    print("CONNECTED")
except LinkError as e:
    print("LINKERROR", e)
"""
    out = run_device(code)
    assert out[-1].startswith("LINKERROR"), out


def test_broker_with_a_name_the_device_did_not_ask_for_is_refused(tmp_path: Path, broker: Broker):
    dev = make_device(broker.ca, tmp_path, "dev")
    code = f"""
from agent import tlslink
from agent.errors import LinkError
rd = lambda p: open(p, "rb").read()
try:
    tlslink.connect("127.0.0.1", {broker.port}, rd({str(broker.root_der)!r}), 5000,
                    rd({str(dev.cert_der)!r}), rd({str(dev.key_der)!r}))
    print("CONNECTED")
except LinkError as e:
    print("LINKERROR", e)
"""
    out = run_device(code)
    assert out[-1].startswith("LINKERROR"), out


def _agent_files(tmp: Path, broker: Broker, dev: Device, topic: str, n: int) -> Path:
    """A device root with config.json, the pinned CA and a stored onboarding result."""
    import base64

    root = tmp / "device"
    (root / "data").mkdir(parents=True)
    shutil.copy(broker.root_der, root / "ca.der")
    (root / "config.json").write_text(
        json.dumps(
            {
                "server": "https://localhost:1",
                "root_ca": "ca.der",
                "telemetry_interval_ms": 100,
                "max_messages": n,
                "max_failures": 3,
            }
        )
    )
    cert = dev.cert_der.read_bytes()
    (root / "data" / "cert.der").write_bytes(cert)
    (root / "data" / "onboard.json").write_text(
        json.dumps(
            {
                "v": 1,
                "device_id": dev.device_id,
                "cert_sha256": hashlib.sha256(cert).hexdigest(),
                "broker": {
                    "host": "localhost",
                    "port": broker.port,
                    "ca_b64": base64.b64encode(broker.root_der.read_bytes()).decode(),
                },
                "topics": {"telemetry": topic},
                "policy": {"telemetry_interval_ms": 100},
            }
        )
    )
    return root


def test_agent_main_sends_telemetry_through_the_real_broker(tmp_path: Path, broker: Broker):
    from cryptography.hazmat.primitives.serialization import load_der_private_key

    dev = make_device(broker.ca, tmp_path, "dev")
    topic = f"qlink/acme/{dev.device_id}/telemetry"
    root = _agent_files(tmp_path, broker, dev, topic, 4)
    key = load_der_private_key(dev.key_der.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    pub = key.public_key().public_bytes(DER.X962, serialization.PublicFormat.UncompressedPoint)
    sub = Subscriber(broker, topic)
    sub.expect = 4
    code = f"""
import os, gc, micropython
os.chdir({str(root)!r})
class Ident:
    device_id = {dev.device_id!r}
    public_key = {pub!r}
    def private_key_der(self):
        return open({str(dev.key_der)!r}, "rb").read()
from agent import main
st = main.run(None, boot=lambda board, d: Ident())
print("SENT", st.sent, "FAILURES", st.failures)
print("PEAK", micropython.mem_peak())
"""
    try:
        out = run_device(code)
        assert sub.done.wait(10)
    finally:
        sub.close()
    assert "SENT 4 FAILURES 0" in out
    assert [line for line in out if line.startswith("I telemetry")] == [
        f"I telemetry: published seq={i}" for i in range(1, 5)
    ]
    docs = [json.loads(p) for _, p, _ in sub.messages]
    assert [d["seq"] for d in docs] == [1, 2, 3, 4]
    assert all(
        set(d) == {"seq", "uptime_ms", "mem_free", "fw"} and d["fw"] == "0.1.0" for d in docs
    )
    assert all(q == 1 for _, _, q in sub.messages)
    assert os.stat(dev.key_der).st_mode & 0o777 == 0o600


# --- onboarding + telemetry with the real identity, inside the RP2040 heap budget -----------

_LABEL = b"qlink-onboard-v1\x00"


class _Onboarding:
    """A stand-in for the server's device API (docs/protocol.md): checks the device's proof
    exactly as the contract says and issues its certificate from the CSR."""

    def __init__(self, ca: Ca, broker: Broker, host: str) -> None:
        self.ca = ca
        self.broker = broker
        self.host = host
        self.challenges: dict[str, tuple[bytes, str, bytes]] = {}
        self.errors: list[str] = []

    def handle(self, path: str, body: dict[str, str]) -> tuple[int, dict[str, object]]:
        import base64
        import secrets

        from cryptography.hazmat.primitives.asymmetric.utils import (
            Prehashed,
            encode_dss_signature,
        )

        if path == "/v1/onboard/hello":
            pub = bytes.fromhex(body["public_key"])
            if hashlib.sha256(pub).hexdigest() != body["device_id"]:
                return 400, {"error": "id_mismatch", "detail": "device_id != SHA-256(key)"}
            cid, ch = secrets.token_hex(16), secrets.token_bytes(32)
            self.challenges[cid] = (ch, body["device_id"], pub)
            return 200, {"challenge_id": cid, "challenge": ch.hex(), "expires": 2**31}
        ch, device_id, pub = self.challenges.pop(body["challenge_id"])
        # The device's OTA key ends the signed input when it sends one (docs/ota.md).
        ota = bytes.fromhex(body["ota_key"]) if body.get("ota_key") else b""
        digest = hashlib.sha256(
            _LABEL + ch + device_id.encode() + b"\x00" + self.host.encode() + ota
        ).digest()
        sig = bytes.fromhex(body["signature"])
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), pub)
        der_sig = encode_dss_signature(int.from_bytes(sig[:32]), int.from_bytes(sig[32:]))
        try:
            key.verify(der_sig, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        except Exception:
            self.errors.append("bad_signature")
            return 403, {"error": "bad_signature", "detail": "proof signature does not verify"}
        csr = x509.load_der_x509_csr(base64.b64decode(body["csr_b64"]))
        assert csr.is_signature_valid
        assert csr.subject == _name(device_id)
        cert = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(self.ca.cert.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(days=1))
            .not_valid_after(NOW + datetime.timedelta(days=30))
            .sign(self.ca.key, hashes.SHA256())
        )
        b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
        return 200, {
            "device_id": device_id,
            "certificate_b64": b64(cert.public_bytes(DER)),
            "chain_b64": [b64(self.ca.cert.public_bytes(DER))],  # the issuing CA
            "broker": {
                "host": "localhost",
                "port": self.broker.port,
                "ca_b64": b64(self.broker.root.cert.public_bytes(DER)),
            },
            "topics": {k: f"qlink/acme/{device_id}/{k}" for k in ("telemetry", "event", "cmd")},
            "policy": {"telemetry_interval_ms": 100},
        }


@contextlib.contextmanager
def _onboarding_server(api: _Onboarding, tmp: Path) -> Iterator[int]:
    import ssl
    from http.server import BaseHTTPRequestHandler, HTTPServer

    key, cert = api.ca.issue("localhost", "localhost")
    (tmp / "api.pem").write_bytes(api.ca.chain_pem(cert))
    _write_secret(tmp / "api.key", _pem_key(key))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status, doc = api.handle(self.path, body)
            out = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp / "api.pem", tmp / "api.key")
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def run_board(root: Path, die: Path, heap: int) -> subprocess.CompletedProcess[str]:
    """Boots the agent the way firmware/main.py does, on the unix board, with `heap` bytes."""
    code = f"""
import os, gc, micropython
os.chdir({str(root)!r})
import board
from agent import main
st = main.run(board.make())
gc.collect()
print("SENT", st.sent, "FAILURES", st.failures)
print("PEAK", micropython.mem_peak())
"""
    return unixport.run_code(code, heap=heap, timeout=120, env={"QLINK_DIE": str(die)})


def _device_root(tmp: Path, port: int, ca: Ca, n: int) -> Path:
    root = tmp / "board"
    root.mkdir()
    (root / "ca.der").write_bytes(ca.cert.public_bytes(DER))
    (root / "config.json").write_text(
        json.dumps(
            {
                "server": f"https://localhost:{port}",
                "root_ca": "ca.der",
                "telemetry_interval_ms": 100,
                "max_messages": n,
                "max_failures": 1,  # the first attempt must succeed; a refusal ends the run at once
                "log_level": "D",
            }
        )
    )
    return root


def test_onboarding_and_telemetry_fit_the_rp2040_heap(tmp_path: Path, broker: Broker):
    """First boot on the unix board with the real identity: enrol, onboard (hello, proof with
    the qdid signature and CSR), store, then QoS 1 telemetry over mTLS, all in 192 KiB of heap.
    A second boot reuses the stored certificate and does not onboard again."""
    die = tmp_path / "die.json"
    die.write_text(json.dumps({"seed": "5a" * 32}))
    api = _Onboarding(broker.ca, broker, "localhost")
    with _onboarding_server(api, tmp_path) as port:
        root = _device_root(tmp_path, port, broker.root, 3)
        first = run_board(root, die, unixport.HEAP_RP2040)
        assert "SENT 3 FAILURES 0" in first.stdout, first.stdout + first.stderr
        assert api.errors == []
        assert (root / "data" / "cert.der").exists()
        issued = len(api.challenges)
        second = run_board(root, die, unixport.HEAP_RP2040)
        assert "SENT 3 FAILURES 0" in second.stdout, second.stdout + second.stderr
        assert "I onboard:" not in second.stdout
        assert len(api.challenges) == issued
    assert [ln for ln in first.stdout.splitlines() if ln.startswith("I telemetry")] == [
        f"I telemetry: published seq={i}" for i in (1, 2, 3)
    ]
