"""Devices' event topics and the server's side of the command channel over a Mosquitto target
(the managed broker, or an external Mosquitto: host/server/targets.py).

- `MqttCommandLink`: publishes signed commands (QoS 1) over an admin connection and waits for
  the broker's PUBACK.
- `EventIntake` (the main server process, one per Mosquitto target, next to the telemetry
  intake): reads every device's `event` topic on its target; command acknowledgements move the
  command's state, and a move's progress (store/moves.py: any event on the target a device
  moves to is `moved`, its `broker` command failed as `unreachable` on the old one is
  `fell_back`); an `online` event makes it
  send again every command the device has not accepted yet (docs/protocol.md "Broker"), so a
  command reaches a device that was off when it was sent, even after a broker restart, and
  records the PUF health it reports (store/puf.py; a device past `drift_pct` of its correction
  budget is logged as drifting and listed by `qlink devices --drifting`). OTA rollouts
  (host/server/rollouts.py) hear of both: `online` may offer the device an active rollout of
  its batch, `{"event": "ota", ...}` moves the device's progress in one.
- Presence (docs/console.md): `online` marks the device online; on the managed broker the qlink
  plugin reports each device connection that closed on `$CONTROL/qlink/v1/presence`, which
  marks it offline.

An event counts only on the device's own topic in its own tenant (the broker's plugin also
keeps a device to its own prefix).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, Protocol

import paho.mqtt.client as mqtt

from host.server.brokerplugin.control import PRESENCE, parse_presence
from host.server.ca import CertificateAuthority
from host.server.commands import (
    Ack,
    CommandError,
    CommandSigner,
    Online,
    Rejected,
    body,
    parse_event,
)
from host.server.deviceid import is_device_id
from host.server.mqtt import Login, MqttError, admin_context, connect
from host.server.policy import device_topic_prefix
from host.server.schemas import (
    COMMAND_DELIVERED,
    COMMAND_DONE,
    COMMAND_FAILED,
    CommandOut,
)
from host.server.store import Store
from host.server.store.targets import MANAGED
from host.server.telemetry import parse_telemetry

log = logging.getLogger("qlink.events")

EVENT_TOPIC = "qlink/+/+/event"
TELEMETRY_TOPIC = "qlink/+/+/telemetry"
_STATE_OF = {"accepted": COMMAND_DELIVERED, "done": COMMAND_DONE, "failed": COMMAND_FAILED}


def command_topic(tenant: str, device_id: str) -> str:
    return f"{device_topic_prefix(tenant, device_id)}/cmd"


def signed_payload(signer: CommandSigner, cmd: CommandOut) -> bytes:
    return signer.sign(body(cmd.device_id, cmd.seq, int(cmd.expires_at), cmd.kind, cmd.args))


def _subscribe(client: mqtt.Client) -> None:
    # The managed broker's qlink plugin also reports each device connection that closed.
    client.subscribe([(EVENT_TOPIC, 1), (PRESENCE, 1)])


def _subscribe_with_telemetry(client: mqtt.Client) -> None:
    # Another target's broker: the managed one's telemetry intake (host/server/telemetry.py)
    # does not see it, so this intake records its devices' telemetry too.
    client.subscribe([(EVENT_TOPIC, 1), (TELEMETRY_TOPIC, 0)])


class MqttCommandLink:
    """Commands to devices of the managed broker, over one admin connection."""

    def __init__(self, client: mqtt.Client, *, owned: bool, timeout_s: float = 5.0) -> None:
        self._client = client
        self._owned = owned
        self._timeout = timeout_s

    @classmethod
    def connect(cls, ca: CertificateAuthority, host: str, port: int) -> MqttCommandLink:
        return cls.login(Login(host, port, admin_context(ca)))

    @classmethod
    def login(cls, login: Login) -> MqttCommandLink:
        try:
            client = connect(login, f"qlink-cmd-{secrets.token_hex(4)}")
        except MqttError as e:
            raise CommandError(f"cannot reach the broker to send the command: {e}") from e
        return cls(client, owned=True)

    def send(self, topic: str, payload: bytes, *, wait: bool = True) -> None:
        info = self._client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise CommandError(f"the broker connection refused the command ({info.rc})")
        if wait:
            info.wait_for_publish(self._timeout)
            if not info.is_published():
                raise CommandError(
                    f"the broker did not acknowledge the command in {self._timeout} s"
                )

    def close(self) -> None:
        if self._owned:
            self._client.loop_stop()
            self._client.disconnect()


class RolloutEvents(Protocol):
    """What the intake tells the OTA rollouts (host/server/rollouts.py)."""

    def on_event(self, device_id: str, doc: dict[str, Any]) -> bool: ...
    def on_online(self, device_id: str) -> CommandOut | None: ...


class EventIntake:
    """Reads devices' events; see the module docstring."""

    target = MANAGED  # the target whose broker it reads
    rollouts: RolloutEvents | None = None  # the OTA rollouts' hooks, when the server has them

    def __init__(
        self,
        store: Store,
        ca: CertificateAuthority,
        host: str,
        port: int,
        on_online: Callable[[str, Online], None] | None = None,
        drift_pct: int = 50,
        on_drift: Callable[[str], None] | None = None,
        *,
        target: str = MANAGED,
        login: Login | None = None,
        rollouts: RolloutEvents | None = None,
    ) -> None:
        """The intake of `target`: the managed broker's admin listener at `host`:`port`, or
        another Mosquitto target through `login` (host and port are then the login's)."""
        self.store = store
        self.target = target
        self.drift_pct = drift_pct
        self._on_drift = on_drift  # the re-enrolment policy, when the operator turned it on
        self.signer = CommandSigner.load_or_create(ca)
        self.received = 0
        self.resent = 0
        self._on_online = on_online
        self.rollouts = rollouts
        self._client = connect(
            login or Login(host, port, admin_context(ca)),
            f"qlink-events-{secrets.token_hex(4)}",
            on_connected=_subscribe if target == MANAGED else _subscribe_with_telemetry,
            configure=self._configure,
        )
        self.link = MqttCommandLink(self._client, owned=False)

    def _configure(self, client: mqtt.Client) -> None:
        client.on_message = self._on_message

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == PRESENCE:
            self._offline(bytes(msg.payload))
            return
        parts = msg.topic.split("/")
        if len(parts) != 4 or not is_device_id(parts[2]):
            return
        tenant, device_id = parts[1], parts[2]
        if parts[3] == "telemetry":
            self._telemetry(tenant, device_id, bytes(msg.payload))
            return
        event = parse_event(bytes(msg.payload))
        if event is None:
            log.warning(
                "event=device_event_malformed device=%s bytes=%d", device_id, len(msg.payload)
            )
            return
        try:
            dev = self.store.devices.get(device_id)
            if dev is None or dev.tenant != tenant:
                log.warning("event=device_event_foreign device=%s tenant=%s", device_id, tenant)
                return
            self.received += 1
            self._handle(dev.tenant, device_id, event)
        except Exception:  # the network thread must survive a database or broker hiccup
            log.exception("event=device_event_failed device=%s", device_id)

    def _offline(self, payload: bytes) -> None:
        """The broker closed a device's connection: the device is offline until its next
        `online` event (docs/console.md "Presence")."""
        device_id = parse_presence(payload)
        if device_id is None:
            log.warning("event=presence_malformed bytes=%d", len(payload))
            return
        try:
            if self.store.devices.set_online(device_id, False):
                log.info("event=device_offline device=%s", device_id)
        except Exception:  # the network thread must survive a database hiccup
            log.exception("event=presence_store_failed device=%s", device_id)

    def _telemetry(self, tenant: str, device_id: str, payload: bytes) -> None:
        data = parse_telemetry(payload)
        if data is None:
            log.warning("event=telemetry_malformed device=%s target=%s", device_id, self.target)
            return
        try:
            # Only the device's own tenant counts, as on the managed broker.
            if self.store.devices.record_telemetry(device_id, data, time.time(), tenant):
                self.store.moves.arrived(device_id, tenant, self.target)
        except Exception:  # the network thread must survive a database hiccup
            log.exception("event=telemetry_store_failed device=%s", device_id)

    def _handle(self, tenant: str, device_id: str, event: object) -> None:
        commands = self.store.commands
        # Any event of the device here means it is connected here: its move may end here.
        if self.store.moves.arrived(device_id, tenant, self.target):
            log.info("event=device_moved device=%s target=%s", device_id, self.target)
        if isinstance(event, Ack):
            changed = commands.report(device_id, event.seq, _STATE_OF[event.status], event.reason)
            log.info(
                "event=command_%s device=%s seq=%d changed=%s target=%s",
                event.status,
                device_id,
                event.seq,
                changed,
                self.target,
            )
            if event.status == "failed" and self.store.moves.fell_back(
                device_id, tenant, self.target, event.seq, event.reason
            ):
                log.info("event=device_fell_back device=%s target=%s", device_id, self.target)
        elif isinstance(event, Rejected):
            log.warning(
                "event=command_rejected device=%s seq=%s reason=%s",
                device_id,
                event.seq,
                event.reason,
            )
            if event.seq is not None:
                commands.report(device_id, event.seq, COMMAND_FAILED, f"rejected: {event.reason}")
        elif isinstance(event, Online):
            self.store.devices.set_online(device_id, True)
            if event.puf:
                used = self.store.puf.record(device_id, time.time(), event.puf)
                if used is not None and used >= self.drift_pct:
                    log.warning(
                        "event=puf_drifting device=%s used_pct=%d threshold_pct=%d",
                        device_id,
                        used,
                        self.drift_pct,
                    )
                    if self._on_drift is not None and not commands.outstanding(
                        device_id, "reenrol"
                    ):
                        self._on_drift(device_id)
            if self.rollouts is not None:
                # An offer made now is stored only: the loop below sends it with the rest.
                try:
                    self.rollouts.on_online(device_id)
                except Exception:  # the device's other commands must still go out
                    log.exception("event=rollout_offer_failed device=%s", device_id)
            for cmd in commands.pending(device_id, event.cmd_seq):
                self.link.send(
                    command_topic(tenant, device_id), signed_payload(self.signer, cmd), wait=False
                )
                self.resent += 1
            if self._on_online is not None:
                self._on_online(device_id, event)
        elif isinstance(event, dict) and event.get("event") == "ota":
            if self.rollouts is not None:
                self.rollouts.on_event(device_id, event)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()
