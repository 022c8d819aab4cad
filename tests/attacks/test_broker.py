"""Attacks on the broker by devices holding valid certificates of their own: taking another
device's MQTT client identifier (its live connection, its stored session), subscribing beyond
their own topics, publishing under another device's topics."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from attacksuite import Attack
from paho.mqtt.reasoncodes import ReasonCode

from hil.fleet import Fleet
from hil.simdevice import ApiResponse, SimDevice, publish, session_present


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
        c.disconnect()
        c.loop_stop()


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
    # Mosquitto 2.0 cannot answer SUBACK 0x80 here: its ACL file never checks a subscription
    # (src/security_default.c returns success for MOSQ_ACL_SUBSCRIBE), only each delivery,
    # and its dynamic-security plugin checks subscriptions only for clients it holds, which
    # devices are not (docs/security.md). AWS IoT refuses them: test_policy_aws.
    attack.expect(
        f"subscribe to {topic.replace('{other}', '<other>')}",
        "another device's messages are never delivered (Mosquitto grants the SUBACK: its ACL "
        "file checks each delivery, not the subscription)",
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
        time.sleep(0.3)
        attack.observe(f"SUBACK {codes[0].value:#04x}, {len(received)} message(s) delivered")
        assert received == []
    finally:
        _close(client, o_client)
