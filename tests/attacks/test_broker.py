"""Attacks on the broker by devices holding valid certificates of their own: taking another
device's MQTT client identifier (its live connection, its stored session), subscribing beyond
their own topics, publishing under another tenant's prefix or on their own command topic.

What reaches the broker's subscribers is watched by the server's own admin connection."""

from __future__ import annotations

import queue
import threading
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from attacksuite import Attack
from paho.mqtt.reasoncodes import ReasonCode

from hil.fleet import Fleet
from hil.serverproc import ServerProcess
from hil.simdevice import ApiResponse, SimDevice, publish, session_present, stop_client
from host.server.brokerplugin.control import PRESENCE
from host.server.ca import CertificateAuthority
from host.server.mqtt import connect_admin


def _online(fleet: Fleet) -> tuple[SimDevice, ApiResponse]:
    device = fleet.take()
    answer = device.onboard()
    assert answer.status == 200, answer.body
    return device, answer


def _watch_disconnect(client: mqtt.Client) -> threading.Event:
    dropped = threading.Event()
    client.on_disconnect = lambda *_: dropped.set()
    return dropped


def _suback(client: mqtt.Client, topic: str) -> list[ReasonCode]:
    got: queue.Queue[list[ReasonCode]] = queue.Queue()
    client.on_subscribe = lambda _c, _u, _mid, codes, _p: got.put(list(codes))
    client.subscribe(topic, qos=1)
    return got.get(timeout=10)


def _close(*clients: mqtt.Client) -> None:
    for c in clients:
        stop_client(c)


def test_device_cannot_take_over_another_devices_live_connection(
    attack: Attack, fleet: Fleet
) -> None:
    attack.expect(
        "MQTT client-ID takeover (live)",
        "a device connecting with another device's ID as client identifier leaves that "
        "device's connection up",
    )
    victim, v_answer = _online(fleet)
    thief, t_answer = _online(fleet)
    v_client = victim.mqtt_connect(v_answer)
    dropped = _watch_disconnect(v_client)
    t_client = thief.mqtt_connect(t_answer, client_id=victim.device_id)
    try:
        kicked = dropped.wait(2.0)
        attack.observe(f"victim {'disconnected' if kicked else 'still connected'}")
        assert not kicked, "the victim's connection was closed by the thief's CONNECT"
        # The victim still publishes on its own connection.
        publish(v_client, v_answer.body["topics"]["telemetry"], {"seq": 1})
    finally:
        _close(t_client, v_client)


def test_device_cannot_resume_another_devices_session(attack: Attack, fleet: Fleet) -> None:
    attack.expect(
        "MQTT client-ID takeover (stored session)",
        "a device connecting with another device's ID and clean_session=0 resumes nothing; "
        "the owner's session survives",
    )
    victim, v_answer = _online(fleet)
    thief, t_answer = _online(fleet)
    v_client = victim.mqtt_connect(v_answer, clean_session=False)
    assert _suback(v_client, v_answer.body["topics"]["cmd"])[0].value == 1
    _close(v_client)
    t_client = thief.mqtt_connect(t_answer, client_id=victim.device_id, clean_session=False)
    stolen = session_present(t_client)
    _close(t_client)
    v_again = victim.mqtt_connect(v_answer, clean_session=False)
    kept = session_present(v_again)
    _close(v_again)
    attack.observe(f"thief resumed a session: {stolen}; victim's session kept: {kept}")
    assert not stolen
    assert kept


@pytest.mark.parametrize(
    "topic",
    ["qlink/acme/{other}/cmd", "qlink/acme/{other}/#", "qlink/#", "#", "qlink/+/+/cmd"],
)
def test_subscription_beyond_own_topics_delivers_nothing(
    attack: Attack, fleet: Fleet, topic: str
) -> None:
    # The broker's qlink plugin judges each SUBSCRIBE by the certificate's tenant (OU) and ID
    # (CN): only the device's own cmd topic, exactly. AWS IoT refuses them too: test_policy_aws.
    attack.expect(
        f"subscribe to {topic.replace('{other}', '<other>')}",
        "refused with SUBACK 0x80; another device's messages are never delivered",
    )
    device, answer = _online(fleet)
    other, o_answer = _online(fleet)
    client = device.mqtt_connect(answer)
    o_client = other.mqtt_connect(o_answer)
    received: list[Any] = []
    client.on_message = lambda _c, _u, msg: received.append(msg.topic)
    try:
        codes = _suback(client, topic.format(other=other.device_id))
        publish(o_client, o_answer.body["topics"]["telemetry"], {"seq": 1})
        # Delivered before the PUBACK of the device's own next message, had it been granted.
        publish(client, answer.body["topics"]["telemetry"], {"seq": 2})
        attack.observe(f"SUBACK {codes[0].value:#04x}, {len(received)} message(s) delivered")
        assert codes[0].value == 0x80
        assert received == []
    finally:
        _close(client, o_client)


class _Watch:
    """The server's admin connection subscribed to every qlink topic: what the broker passes
    on to the platform (telemetry intake, event intake)."""

    def __init__(self, server: ServerProcess) -> None:
        self.seen: queue.Queue[tuple[str, bytes]] = queue.Queue()
        subscribed = threading.Event()

        def configure(c: mqtt.Client) -> None:
            c.on_message = lambda _c, _u, m: self.seen.put((m.topic, m.payload))
            c.on_subscribe = lambda *_a: subscribed.set()

        ca = CertificateAuthority.load(server.data_dir / "ca")
        port = int(server.info["broker_admin_port"])
        self.client = connect_admin(
            ca, "127.0.0.1", port, "attack-watch", lambda c: c.subscribe("qlink/#", 1), configure
        )
        assert subscribed.wait(10)

    def until(self, topic: str) -> list[str]:
        """Every topic received up to and including `topic`."""
        topics = []
        while not topics or topics[-1] != topic:
            topics.append(self.seen.get(timeout=10)[0])
        return topics

    def close(self) -> None:
        _close(self.client)


@pytest.mark.parametrize("leaf", ["telemetry", "event"])
def test_device_cannot_publish_under_another_tenants_prefix(
    attack: Attack, fleet: Fleet, server: ServerProcess, leaf: str
) -> None:
    attack.expect(
        f"publish {leaf} under another tenant's prefix",
        "qlink/<other tenant>/<own ID>/... reaches no subscriber (the certificate names the "
        "tenant)",
    )
    device, answer = _online(fleet)
    watch = _Watch(server)
    client = device.mqtt_connect(answer)
    try:
        own = answer.body["topics"][leaf]
        forged = own.replace(f"qlink/{fleet.tenant}/", "qlink/globex/", 1)
        assert forged != own
        publish(client, forged, {"seq": 1})
        publish(client, own, {"seq": 2})  # handled after the forged one
        topics = watch.until(own)
        attack.observe(f"the platform received {topics}")
        assert forged not in topics
    finally:
        _close(client)
        watch.close()


def test_device_cannot_publish_on_its_own_command_topic(
    attack: Attack, fleet: Fleet, server: ServerProcess
) -> None:
    attack.expect(
        "publish on its own cmd topic",
        "the command channel is the server's: the message reaches neither the device nor the "
        "platform",
    )
    device, answer = _online(fleet)
    watch = _Watch(server)
    client = device.mqtt_connect(answer)
    received: list[Any] = []
    client.on_message = lambda _c, _u, msg: received.append(msg.topic)
    try:
        cmd = answer.body["topics"]["cmd"]
        assert _suback(client, cmd)[0].value == 1
        publish(client, cmd, {"seq": 1, "kind": "reboot"})
        publish(client, answer.body["topics"]["telemetry"], {"seq": 2})
        topics = watch.until(answer.body["topics"]["telemetry"])
        attack.observe(
            f"{len(received)} delivered to the device; platform received {len(topics) - 1} "
            "before the next telemetry"
        )
        assert received == [] and cmd not in topics
    finally:
        _close(client)
        watch.close()


def test_device_cannot_forge_another_devices_disconnection(
    attack: Attack, fleet: Fleet, server: ServerProcess
) -> None:
    attack.expect(
        "forge the broker's presence report (another device disconnected)",
        "only the broker publishes presence: the forged report reaches no subscriber and the "
        "device cannot subscribe to the reports",
    )
    victim, victim_answer = _online(fleet)
    device, answer = _online(fleet)
    watch = _Watch(server)
    watch.client.subscribe(PRESENCE, 1)
    victim_client = device_client = None
    try:
        victim_client = victim.mqtt_connect(victim_answer)
        device_client = device.mqtt_connect(answer)
        publish(device_client, PRESENCE, {"client": victim.device_id})
        publish(device_client, answer.body["topics"]["telemetry"], {"seq": 1})
        topics = watch.until(answer.body["topics"]["telemetry"])
        codes = _suback(device_client, PRESENCE)
        attack.observe(
            f"the platform received {topics}; SUBACK {codes[0].value:#04x} on the reports"
        )
        assert PRESENCE not in topics
        assert codes[0].value == 0x80
        # The watch does hear the broker's own report: the victim really leaving.
        _close(victim_client)
        victim_client = None
        topic, payload = watch.seen.get(timeout=10)
        assert topic == PRESENCE and victim.device_id in payload.decode()
    finally:
        _close(*(c for c in (victim_client, device_client) if c is not None))
        watch.close()
