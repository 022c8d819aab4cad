"""The command channel through the real server and broker, with a device written from
docs/protocol.md alone: a signed command arrives on the device's `cmd` topic, the device's
acknowledgements move its state, and a device that was offline gets it when it comes online."""

from __future__ import annotations

import base64
import json
import queue
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from hil.simdevice import ApiResponse, SimDevice, publish

pytestmark = pytest.mark.e2e
_LABEL = b"qlink-cmd-v1\x00"


class Device:
    """A device's command side as docs/protocol.md describes it."""

    def __init__(self, sim: SimDevice, answer: ApiResponse) -> None:
        self.sim, self.answer = sim, answer
        signer = x509.load_der_x509_certificate(base64.b64decode(answer.body["command_signer_b64"]))
        root = x509.load_der_x509_certificate(base64.b64decode(answer.body["broker"]["ca_b64"]))
        signer.verify_directly_issued_by(root)  # the pinned root certifies it
        key = signer.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        self.key = key
        self.topics = answer.body["topics"]
        self.inbox: queue.Queue[bytes] = queue.Queue()
        self.client: mqtt.Client | None = None

    def connect(self, cmd_seq: int = 0) -> None:
        c = self.sim.mqtt_connect(self.answer)
        c.on_message = lambda _c, _u, m: self.inbox.put(bytes(m.payload))
        granted: queue.Queue[Any] = queue.Queue()
        c.on_subscribe = lambda _c, _u, _mid, codes, _p: granted.put(codes)
        c.subscribe(self.topics["cmd"], qos=1)
        assert not granted.get(timeout=5)[0].is_failure
        self.client = c
        self.event({"event": "online", "fw": "test", "cmd_seq": cmd_seq, "puf": {"margin": 30}})

    def event(self, doc: dict[str, Any]) -> None:
        assert self.client is not None
        publish(self.client, self.topics["event"], doc)

    def receive(self, timeout_s: float = 10.0) -> dict[str, Any]:
        payload = self.inbox.get(timeout=timeout_s)
        sig, body = payload[:64], payload[64:]
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        self.key.verify(der, _LABEL + body, ec.ECDSA(hashes.SHA256()))
        doc: dict[str, Any] = json.loads(body)
        assert doc["device_id"] == self.sim.device_id and doc["exp"] > time.time()
        return doc

    def close(self) -> None:
        if self.client is not None:
            self.client.loop_stop()
            self.client.disconnect()
            self.client = None


def _state(server: Any, device_id: str, seq: int, want: str, timeout_s: float = 10.0) -> str:
    deadline = time.monotonic() + timeout_s
    state = "?"
    while time.monotonic() < deadline:
        out = json.loads(server.cli("device", "commands", device_id, "--json").stdout)
        state = next(c["state"] for c in out if c["seq"] == seq)
        if state == want:
            return state
        time.sleep(0.05)
    return state


def test_a_command_reaches_an_online_device_and_its_state_follows(server, fleet) -> None:  # type: ignore[no-untyped-def]
    sim = fleet.take()
    dev = Device(sim, sim.onboard())
    dev.connect()
    try:
        sent = json.loads(server.cli("device", "command", sim.device_id, "ping", "--json").stdout)
        doc = dev.receive()
        assert (doc["seq"], doc["kind"], doc["args"]) == (sent["seq"], "ping", {})
        dev.event({"event": "command", "seq": doc["seq"], "status": "accepted"})
        assert _state(server, sim.device_id, doc["seq"], "delivered") == "delivered"
        dev.event({"event": "command", "seq": doc["seq"], "status": "done"})
        assert _state(server, sim.device_id, doc["seq"], "done") == "done"
    finally:
        dev.close()


def test_a_device_that_was_offline_gets_its_command_when_it_comes_online(server, fleet) -> None:  # type: ignore[no-untyped-def]
    sim = fleet.take()
    dev = Device(sim, sim.onboard())
    dev.connect()
    dev.close()
    sent = json.loads(server.cli("device", "command", sim.device_id, "ping", "--json").stdout)
    assert sent["state"] == "queued"
    dev.connect(cmd_seq=sent["seq"] - 1)
    try:
        doc = dev.receive()
        assert doc["seq"] == sent["seq"]
        dev.event({"event": "command", "seq": doc["seq"], "status": "done"})
        assert _state(server, sim.device_id, doc["seq"], "done") == "done"
    finally:
        dev.close()


def test_the_cli_waits_for_the_outcome(server, fleet) -> None:  # type: ignore[no-untyped-def]
    sim = fleet.take()
    dev = Device(sim, sim.onboard())
    dev.connect()
    try:
        proc = server.cli("device", "command", sim.device_id, "ping", "--wait", "0.5", check=False)
        assert proc.returncode == 1, proc.stderr  # not done within half a second
        assert f"device {sim.device_id}: command " in proc.stdout
        doc = dev.receive()
        dev.event({"event": "command", "seq": doc["seq"], "status": "done"})
        assert _state(server, sim.device_id, doc["seq"], "done") == "done"
    finally:
        dev.close()
