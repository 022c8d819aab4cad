"""Attacks across boundaries: HTTP framing tricks on the device API, a device publishing under
another device's topics, a certificate from another CA at the broker, an operator of one tenant
reaching another's devices, and a revoked device trying to stay connected."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from attacksuite import Attack
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from hil.fleet import Fleet
from hil.serverproc import ServerProcess
from hil.simdevice import publish, stop_client


def _raw_exchange(server: ServerProcess, data: bytes, pause_s: float = 0.0) -> bytes:
    """`data` sent as is over TLS to the device API; the answer's first line."""
    ctx = ssl.create_default_context(cafile=str(server.root_pem_path))
    port = int(server.api_url.rsplit(":", 1)[1])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(data)
        if pause_s:
            time.sleep(pause_s)
        answer = b""
        while b"\r\n" not in answer:
            chunk = tls.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.split(b"\r\n", 1)[0]


def _head(length: str, extra: str = "") -> bytes:
    return (
        "POST /v1/onboard/hello HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n{extra}\r\n"
    ).encode()


FRAMING = [
    ("body over 16 KiB", _head("20000") + b"{" * 20000, 0.0, b"413"),
    ("conflicting Content-Length", _head("2", "Content-Length: 3\r\n") + b"{}", 0.0, b"400"),
    ("negative Content-Length", _head("-1") + b"{}", 0.0, b"400"),
    ("body that never arrives (slowloris)", _head("100") + b"{", 11.0, b"408"),
]


@pytest.mark.parametrize(("name", "data", "pause", "want"), FRAMING, ids=[f[0] for f in FRAMING])
def test_http_framing_tricks(
    attack: Attack, server: ServerProcess, name: str, data: bytes, pause: float, want: bytes
) -> None:
    attack.expect(f"HTTP framing: {name}", f"answered {want.decode()}, the request refused")
    line = _raw_exchange(server, data, pause)
    attack.observe(line.decode(errors="replace"))
    assert line.split(b" ")[1] == want


def test_device_cannot_publish_under_another_devices_topic(attack: Attack, fleet: Fleet) -> None:
    attack.expect(
        "publish under another device's topic",
        "the broker drops it: the other device receives nothing",
    )
    victim, thief = fleet.take(), fleet.take()
    v_answer, t_answer = victim.onboard(), thief.onboard()
    v_client = victim.mqtt_connect(v_answer)
    received: list[str] = []
    got = threading.Event()
    v_client.on_message = lambda _c, _u, m: (received.append(m.topic), got.set())
    v_client.subscribe(v_answer.body["topics"]["cmd"], qos=1)
    time.sleep(0.3)
    t_client = thief.mqtt_connect(t_answer)
    try:
        publish(t_client, v_answer.body["topics"]["cmd"], {"cmd": "unlock"})
        arrived = got.wait(1.0)
    finally:
        for c in (t_client, v_client):
            stop_client(c)
    attack.observe(f"{len(received)} message(s) reached the victim")
    assert not arrived


def test_certificate_from_another_ca_is_refused_by_the_broker(
    attack: Attack, fleet: Fleet, tmp_path: Any
) -> None:
    attack.expect("broker: certificate from another CA", "the TLS handshake fails; no MQTT session")
    key = ec.generate_private_key(ec.SECP256R1())
    device = fleet.take()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device.device_id)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.create_default_context(cafile=str(fleet.server.root_pem_path))
    ctx.load_cert_chain(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device.device_id)
    client.tls_set_context(ctx)
    try:
        client.connect("localhost", fleet.server.broker_port, keepalive=10)
        client.loop_read()
        client.loop_read()
        outcome = "connected" if client.is_connected() else "no session"
    except (ssl.SSLError, OSError) as e:
        outcome = f"refused ({type(e).__name__})"
    attack.observe(outcome)
    assert outcome != "connected"


@pytest.fixture(scope="module")
def other_tenant(server: ServerProcess, fleet: Fleet) -> Iterator[httpx.Client]:
    server.ensure_tenant("globex")
    token = server.cli("token", "create", "intruder", "--role", "admin", "--tenant", "globex")
    with httpx.Client(
        base_url=server.api_url,
        verify=ssl.create_default_context(cafile=str(server.root_pem_path)),
        headers={"authorization": f"Bearer {token.stdout.strip()}"},
    ) as c:
        yield c


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/admin/devices/{id}"),
        ("POST", "/v1/admin/devices/{id}/revoke"),
        ("POST", "/v1/admin/devices/{id}/disable"),
        ("GET", "/v1/admin/batches/{batch}"),
        ("GET", "/v1/admin/batches/{batch}/export"),
    ],
)
def test_operator_of_another_tenant_reaches_nothing(
    attack: Attack, fleet: Fleet, other_tenant: httpx.Client, method: str, path: str
) -> None:
    attack.expect(
        f"tenant crossing: {method} {path}",
        "an admin of another tenant gets 404 not_found and changes nothing",
    )
    device = fleet.take()
    before = fleet.dump()
    r = other_tenant.request(method, path.format(id=device.device_id, batch=fleet.batch))
    attack.observe(f"HTTP {r.status_code} {r.json().get('error')}")
    assert (r.status_code, r.json()["error"]) == (404, "not_found")
    assert fleet.dump() == before


def test_revoked_device_is_cut_off_and_stays_out(attack: Attack, fleet: Fleet) -> None:
    attack.expect(
        "revoked device",
        "its live broker connection is dropped, a new TLS handshake fails, onboarding refused",
    )
    device = fleet.take()
    answer = device.onboard()
    client = device.mqtt_connect(answer)
    dropped = threading.Event()
    client.on_disconnect = lambda *_: dropped.set()
    out = fleet.server.cli("device", "revoke", device.device_id)
    live = "dropped" if dropped.wait(5) else "still up"
    client.loop_stop()
    try:
        device.mqtt_connect(answer).disconnect()
        again = "connected"
    except (ConnectionError, ssl.SSLError, OSError, subprocess.SubprocessError) as e:
        again = f"refused ({type(e).__name__})"
    hello = device.hello()
    attack.observe(
        f"revoke exit {out.returncode}; live {live}; reconnect {again}; "
        f"hello HTTP {hello.status} {hello.error}"
    )
    assert live == "dropped" and again.startswith("refused")
    assert (hello.status, hello.error) == (403, "not_registered")
