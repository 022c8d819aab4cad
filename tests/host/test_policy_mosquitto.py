"""The managed Mosquitto as the server sets it up: device rights from the certificate (pattern
ACL `qlink/+/%u/#`, CN = device ID), exceptions (admin, disabled and revoked devices) in the
dynamic-security plugin, which Mosquitto asks first.

Mosquitto 2.0.11 with `use_identity_as_username` skips the password check entirely: any
certificate the CA issued connects. "Does not arrive" is proven without sleeping: after the
forbidden publish is acknowledged, the same test publishes an allowed sentinel; the broker
handles one client's messages in order, so once the sentinel arrived, the forbidden message
would have too.
"""

from __future__ import annotations

import hashlib
import json
import queue
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from host.server.broker import DENY_ROLE, ManagedBroker
from host.server.ca import CertificateAuthority
from host.server.mqtt import connect_admin
from host.server.policy import Policies
from host.server.policy.mosquitto import MosquittoDynsec
from host.server.store import LOCAL, Store

TENANT = "acme"


class Device:
    def __init__(self, ca: CertificateAuthority, workdir: Path) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        pub = key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        self.id = hashlib.sha256(pub).hexdigest()
        self.pub = pub
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.id)]))
            .sign(key, hashes.SHA256())
        )
        cert = ca.issue_device(csr, self.id, 1)
        self.cert = workdir / f"{self.id[:8]}.pem"
        self.key = workdir / f"{self.id[:8]}.key"
        self.cert.write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
            + ca.issuing_cert.public_bytes(serialization.Encoding.PEM)
        )
        self.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        self.ca = ca
        self.client: mqtt.Client | None = None

    def topic(self, tenant: str = TENANT, device_id: str | None = None) -> str:
        return f"qlink/{tenant}/{device_id or self.id}/telemetry"

    def connect(self, port: int) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.id, protocol=mqtt.MQTTv311)
        c.tls_set(str(self.ca.bundle_path), str(self.cert), str(self.key))
        done = threading.Event()
        codes: list[mqtt.ReasonCode] = []
        c.on_connect = lambda _c, _u, _f, rc, _p: (codes.append(rc), done.set())
        c.connect("127.0.0.1", port)
        c.loop_start()
        assert done.wait(5), "no CONNACK"
        assert not codes[0].is_failure, codes
        self.client = c
        return c

    def publish(self, topic: str, payload: bytes) -> None:
        assert self.client is not None
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(5)
        assert info.is_published()  # PUBACK: the broker handled it (delivered or dropped)

    def subscribe(self, topic: str) -> list[mqtt.ReasonCode]:
        assert self.client is not None
        got: queue.Queue[list[mqtt.ReasonCode]] = queue.Queue()
        self.client.on_subscribe = lambda _c, _u, _m, codes, _p: got.put(list(codes))
        self.client.subscribe(topic, qos=1)
        return got.get(timeout=5)

    def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()


class Listener:
    """The admin connection, subscribed to every qlink topic."""

    def __init__(self, ca: CertificateAuthority, port: int) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        subscribed = threading.Event()

        def configure(c: mqtt.Client) -> None:
            c.on_message = lambda _c, _u, m: self.messages.put((m.topic, m.payload))
            c.on_subscribe = lambda *_a: subscribed.set()

        self.client = connect_admin(
            ca, "127.0.0.1", port, "test-listener", lambda c: c.subscribe("qlink/#", 1), configure
        )
        assert subscribed.wait(5)

    def until(self, topic: str, payload: bytes) -> list[tuple[str, bytes]]:
        """Everything received up to and including (topic, payload)."""
        seen = []
        while True:
            msg = self.messages.get(timeout=5)
            seen.append(msg)
            if msg == (topic, payload):
                return seen


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    root = tmp_path_factory.mktemp("broker")
    ca = CertificateAuthority.load_or_create(root / "ca")
    broker = ManagedBroker(root / "broker", ca)
    broker.start()
    policy = MosquittoDynsec(ca, "127.0.0.1", broker.admin_port)
    listener = Listener(ca, broker.admin_port)
    devices = [Device(ca, root) for _ in range(3)]
    a, b, stranger = devices
    policy.register_device(TENANT, a.id)
    policy.register_device(TENANT, b.id)
    for d in devices:
        d.connect(broker.port)
    yield {
        "ca": ca,
        "broker": broker,
        "policy": policy,
        "listener": listener,
        "a": a,
        "b": b,
        "stranger": stranger,
    }
    for d in devices:
        d.close()
    listener.client.disconnect()
    listener.client.loop_stop()
    policy.close()
    broker.stop()


def test_device_publish_to_own_topic_arrives(env: dict) -> None:
    a, listener = env["a"], env["listener"]
    a.publish(a.topic(), b'{"seq":1}')
    assert listener.until(a.topic(), b'{"seq":1}') == [(a.topic(), b'{"seq":1}')]


def test_device_publish_to_other_device_topic_does_not_arrive(env: dict) -> None:
    a, b, listener = env["a"], env["b"], env["listener"]
    a.publish(a.topic(device_id=b.id), b"forged")
    a.publish(a.topic(), b"sentinel-1")
    assert listener.until(a.topic(), b"sentinel-1") == [(a.topic(), b"sentinel-1")]


def test_device_publish_under_other_tenant_is_its_own_id_only(env: dict) -> None:
    # The pattern has no tenant: a device may publish under another tenant's prefix, but only
    # with its own ID (the server's telemetry intake ignores it: test_registry.py); never as
    # another device, in any tenant.
    a, b, listener = env["a"], env["b"], env["listener"]
    a.publish(a.topic(tenant="other", device_id=b.id), b"forged")
    a.publish(a.topic(tenant="other"), b"own-id")
    assert listener.until(a.topic(tenant="other"), b"own-id") == [
        (a.topic(tenant="other"), b"own-id")
    ]


def test_device_cannot_publish_outside_its_own_topics(env: dict) -> None:
    s, a, listener = env["stranger"], env["a"], env["listener"]
    for topic in (
        a.topic(),
        f"qlink/{TENANT}/{s.id}0/telemetry",  # an ID that merely starts with its own
        f"qlink/{TENANT}/x/{s.id}/telemetry",
        "qlink/x",
        "other/topic",
        f"other/{TENANT}/{s.id}/telemetry",
        "$CONTROL/dynamic-security/v1",
    ):
        s.publish(topic, b"from-stranger")
    a.publish(a.topic(), b"sentinel-3")
    assert listener.until(a.topic(), b"sentinel-3") == [(a.topic(), b"sentinel-3")]


def test_subscriptions_deliver_only_own_topics(env: dict) -> None:
    # Mosquitto 2.0 grants a SUBSCRIBE that only the pattern could judge; what counts is that
    # nothing outside the device's own topics is ever delivered to it.
    a, b = env["a"], env["b"]
    got: queue.Queue[tuple[str, bytes]] = queue.Queue()
    assert a.client is not None
    a.client.on_message = lambda _c, _u, m: got.put((m.topic, m.payload))
    for topic in (f"qlink/{TENANT}/{b.id}/#", "qlink/#", "#"):
        a.subscribe(topic)
    b.publish(b.topic(), b"for-b-only")
    a.publish(a.topic(), b"sentinel-4")
    first = got.get(timeout=5)
    assert first == (a.topic(), b"sentinel-4")
    a.client.unsubscribe(["qlink/#", "#", f"qlink/{TENANT}/{b.id}/#"])


def test_register_leaves_no_entry_and_clears_a_deny(env: dict, tmp_path: Path) -> None:
    policy, listener, a = env["policy"], env["listener"], env["a"]
    c = Device(env["ca"], tmp_path)
    try:
        policy.register_device(TENANT, c.id)
        policy.register_device(TENANT, c.id)  # idempotent
        assert policy.request("getClient", username=c.id).get("error") == "Client not found"
        policy.disable_device(c.id)
        assert not _reaches_broker(c, env["broker"].port, listener, a)
        policy.register_device(TENANT, c.id)
        assert _reaches_broker(c, env["broker"].port, listener, a)
    finally:
        c.close()


def test_deny_role_refuses_everything(env: dict) -> None:
    policy = env["policy"]
    role = policy.request("getRole", rolename=DENY_ROLE)["data"]["role"]
    acls = sorted((x["acltype"], x["topic"], x["allow"]) for x in role["acls"])
    assert acls == [
        ("publishClientReceive", "#", False),
        ("publishClientSend", "#", False),
        ("subscribePattern", "#", False),
    ]


def test_broker_files(env: dict) -> None:
    broker = env["broker"]
    conf = broker.config_path.read_text().splitlines()
    for line in (
        "require_certificate true",
        "use_identity_as_username true",
        "allow_anonymous false",
        "persistence false",
        "set_tcp_nodelay true",
        "use_username_as_clientid true",
        f"listener {broker.port} 127.0.0.1",
        f"listener {broker.admin_port} 127.0.0.1",
        f"cafile {broker.ca.cert_path('admin')}",
    ):
        assert line in conf
    assert f"acl_file {broker.acl_path}" in conf
    acl = [x for x in broker.acl_path.read_text().splitlines() if not x.startswith("#")]
    assert acl == ["pattern readwrite qlink/+/%u/#"]
    assert stat.S_IMODE(broker.acl_path.stat().st_mode) == 0o600
    dynsec = json.loads(broker.dynsec_path.read_text())
    assert dynsec["defaultACLAccess"] == {
        "publishClientSend": False,
        "publishClientReceive": True,
        "subscribe": False,
        "unsubscribe": True,
    }
    assert stat.S_IMODE(broker.dynsec_path.stat().st_mode) == 0o600


def test_broker_stops(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    broker = ManagedBroker(tmp_path / "broker", ca)
    broker.start()
    assert broker.running
    broker.stop()
    assert not broker.running
    import socket

    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", broker.port), 1):
        pass


def _reaches_broker(device: Device, port: int, listener: Listener, sentinel: Device) -> bool:
    """Connect `device` afresh and publish to its own topic; True if that message arrived.
    Proven without sleeping: `sentinel`'s allowed message is published after it."""
    device.close()
    device.client = None
    try:
        device.connect(port)
    except AssertionError:
        return False  # refused at CONNACK or not answered: it does not reach the broker
    payload = b"probe-" + device.id[:8].encode()
    try:
        device.publish(device.topic(), payload)
    except (AssertionError, RuntimeError, ValueError):
        return False
    mark = b"mark-" + payload
    sentinel.publish(sentinel.topic(), mark)
    seen = listener.until(sentinel.topic(), mark)
    return (device.topic(), payload) in seen


def test_disable_enable_delete_live(env: dict, tmp_path: Path) -> None:
    policy, listener, a = env["policy"], env["listener"], env["a"]
    port = env["broker"].port
    c = Device(env["ca"], tmp_path)
    policy.register_device(TENANT, c.id)
    try:
        assert _reaches_broker(c, port, listener, a)
        policy.disable_device(c.id)
        policy.disable_device(c.id)  # idempotent
        assert not _reaches_broker(c, port, listener, a)
        policy.enable_device(c.id)
        assert _reaches_broker(c, port, listener, a)
        policy.delete_device(c.id)
        policy.delete_device(c.id)  # idempotent
        assert not _reaches_broker(c, port, listener, a)
        roles = policy.request("getClient", username=c.id)["data"]["client"]["roles"]
        assert [r["rolename"] for r in roles] == [DENY_ROLE]  # stays: revocation is for good
    finally:
        c.close()


def test_revoked_certificate_fails_tls_after_crl_reload(env: dict, tmp_path: Path) -> None:
    ca, broker, policy = env["ca"], env["broker"], env["policy"]
    c = Device(ca, tmp_path)
    policy.register_device(TENANT, c.id)
    try:
        c.connect(broker.port)
        c.close()
        serial = x509.load_pem_x509_certificates(c.cert.read_bytes())[0].serial_number
        ca.publish_crl([(serial, 1.8e9)])
        mark = broker.log_path.stat().st_size
        assert broker.reload()
        deadline = time.monotonic() + 5
        while b"Reloading config" not in broker.log_path.read_bytes()[mark:]:
            assert time.monotonic() < deadline, broker.log_tail()
            time.sleep(0.05)
        with pytest.raises(AssertionError, match="no CONNACK"):
            c.connect(broker.port)
        assert "certificate verify failed" in broker.log_tail(5)
    finally:
        c.close()
        ca.publish_crl([])
        broker.reload()


def test_denials_are_applied_again_from_the_store(env: dict, tmp_path: Path) -> None:
    # The plugin's file lost (or older than the denials): a disabled device would have its
    # certificate's rights back until the server applies the store's denials at start.
    policy, listener, a = env["policy"], env["listener"], env["a"]
    port = env["broker"].port
    c, d = Device(env["ca"], tmp_path), Device(env["ca"], tmp_path)
    reg = Store(tmp_path / "registry.sqlite")
    try:
        reg.batches.create("b1", TENANT)
        reg.batches.import_devices("b1", [f"{x.id},{x.pub.hex()}" for x in (c, d)])
        dev = reg.devices.get(c.id)
        assert dev is not None
        reg.devices.set_disabled(dev, True, LOCAL)
        assert _reaches_broker(c, port, listener, a)  # the store says disabled, the broker not
        policies = Policies({"mosquitto": policy}, reg.devices)
        assert policies.reapply_denials("mosquitto") == 1
        assert not _reaches_broker(c, port, listener, a)
        assert _reaches_broker(d, port, listener, a)  # an enabled device keeps its rights
    finally:
        reg.close()
        c.close()
        d.close()
