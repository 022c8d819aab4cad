"""Clients of a managed Mosquitto for the host tests: a device with a certificate from the CA
(CN = device ID, OU = tenant unless told otherwise), the admin listening on every qlink topic,
and a probe that tells whether a device's message gets through.

"Does not arrive" is proven without sleeping: after the forbidden publish is acknowledged, the
test publishes an allowed sentinel; the broker handles one client's messages in order, so once
the sentinel arrived, the forbidden message would have too.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from hil.simdevice import stop_client
from host.server.ca import CertificateAuthority
from host.server.mqtt import connect_admin

TENANT = "acme"
REFUSED = 0x80  # SUBACK return code "Failure" (MQTT 3.1.1, 3.9.3)


class Device:
    """A device with its own key and a certificate of the CA: CN = device ID, OU = `tenant`
    (None: the CN-only certificate issued before tenants were written in)."""

    def __init__(
        self, ca: CertificateAuthority, workdir: Path, tenant: str | None = TENANT
    ) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        pub = key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        self.id = hashlib.sha256(pub).hexdigest()
        self.pub = pub
        self.tenant = tenant or TENANT
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.id)]))
            .sign(key, hashes.SHA256())
        )
        cert = ca.issue_device(csr, self.id, 1, tenant=tenant)
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
        self.dropped = threading.Event()  # set when the broker closes the current connection
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()

    def topic(
        self, tenant: str | None = None, device_id: str | None = None, leaf: str = "telemetry"
    ) -> str:
        return f"qlink/{tenant or self.tenant}/{device_id or self.id}/{leaf}"

    def connect(self, port: int) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.id, protocol=mqtt.MQTTv311)
        c.tls_set(str(self.ca.bundle_path), str(self.cert), str(self.key))
        done = threading.Event()
        dropped = self.dropped = threading.Event()
        codes: list[mqtt.ReasonCode] = []
        c.on_connect = lambda _c, _u, _f, rc, _p: (codes.append(rc), done.set())
        c.on_disconnect = lambda *_a: dropped.set()
        c.on_message = lambda _c, _u, m: self.messages.put((m.topic, m.payload))
        c.connect("127.0.0.1", port)
        c.loop_start()
        try:
            assert done.wait(5), "no CONNACK"
            assert not codes[0].is_failure, codes
        except AssertionError:
            # A refused client must not live on: its loop would retry, and its TLS socket be
            # left for the garbage collector (a ResourceWarning in whichever test runs then).
            stop_client(c)
            raise
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
            stop_client(self.client)
            self.client = None


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

    def close(self) -> None:
        stop_client(self.client)


def reaches_broker(device: Device, port: int, listener: Listener, sentinel: Device) -> bool:
    """Connect `device` afresh and publish to its own topic; True if that message arrived.
    Proven without sleeping: `sentinel`'s allowed message is published after it."""
    device.close()
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
