"""Telemetry intake: the server subscribes to every device's telemetry topic and keeps the
last message and the time it arrived per device."""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

import paho.mqtt.client as mqtt

from host.server import jsonin
from host.server.ca import CertificateAuthority
from host.server.deviceid import is_device_id
from host.server.mqtt import connect_admin
from host.server.store.devices import Devices

log = logging.getLogger("qlink.telemetry")

TOPIC = "qlink/+/+/telemetry"
_INT_FIELDS = ("seq", "uptime_ms", "mem_free")
_MAX_PAYLOAD = 4096


def parse_telemetry(payload: bytes | bytearray) -> dict[str, Any] | None:
    """The telemetry object of docs/protocol.md, or None if the payload is not one."""
    if len(payload) > _MAX_PAYLOAD:
        return None
    try:
        data = jsonin.loads(payload)
    except ValueError:  # JsonRejected (also not UTF-8) or a syntax error
        return None
    if not isinstance(data, dict):
        return None
    for name in _INT_FIELDS:
        value = data.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return None
    if data["seq"] < 1 or not isinstance(data.get("fw"), str):
        return None
    return data


def _subscribe(client: mqtt.Client) -> None:
    client.subscribe(TOPIC, qos=0)


class TelemetrySubscriber:
    def __init__(self, devices: Devices, ca: CertificateAuthority, host: str, port: int) -> None:
        self.devices = devices
        self.received = 0
        self._client = connect_admin(
            ca,
            host,
            port,
            f"qlink-telemetry-{secrets.token_hex(4)}",
            on_connected=_subscribe,
            configure=self._configure,
        )

    def _configure(self, client: mqtt.Client) -> None:
        client.on_message = self._on_message

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        tenant, device_id = (parts[1], parts[2]) if len(parts) == 4 else ("-", "-")
        if not is_device_id(device_id):  # the pattern ACL lets a device publish only here
            log.warning("event=telemetry_bad_topic topic=%s", msg.topic[:200])
            return
        data = parse_telemetry(msg.payload)
        if data is None:
            log.warning("event=telemetry_malformed device=%s bytes=%d", device_id, len(msg.payload))
            return
        try:
            # The broker lets a device publish under any tenant with its own ID: only the
            # device's own tenant counts.
            known = self.devices.record_telemetry(device_id, data, time.time(), tenant)
        except Exception:  # the network thread must survive a database hiccup
            log.exception("event=telemetry_store_failed device=%s", device_id)
            return
        if not known:
            log.warning("event=telemetry_unknown_device device=%s tenant=%s", device_id, tenant)
            return
        self.received += 1
        log.debug("event=telemetry device=%s seq=%d", device_id, data["seq"])

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()
