"""Mosquitto: device rights from the certificate, denials in the qlink plugin's set.

A device's certificate (CN = device ID, OU = tenant, issued only at onboarding) gives it its
rights at the broker: the qlink plugin lets it use `qlink/<tenant>/<id>/{telemetry,event}` and
receive on `.../cmd`, nothing else (host/server/broker.py). Registering a device therefore
changes nothing on the broker but clears any denial left for it. Disabling or revoking puts the
device in the plugin's denied set, which refuses it everything and drops its live connection;
one message carries up to 4096 devices, so a batch revocation or the denials applied again at
start take a few messages, and the broker writes no file for any of them.

Two control channels over one admin connection:
- `$CONTROL/qlink/v1` (the qlink plugin): line requests (host/server/brokerplugin/control.py),
  answered to this connection alone with the request's correlation value.
- `$CONTROL/dynamic-security/v1` (JSON; answers on `.../v1/response` with the same
  `correlationData`): only the admin role lives there. At connection the driver adds the
  role's ACLs that a `dynamic-security.json` of an older server lacks (the qlink plugin's
  control topic, the command channel).

Each call waits for its answer and checks it; every operation is idempotent.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt

from host.server.broker import ADMIN_ROLE, admin_acls
from host.server.brokerplugin import control
from host.server.ca import CertificateAuthority
from host.server.mqtt import MqttError, connect_admin
from host.server.policy import PolicyError

log = logging.getLogger("qlink.policy")

POLICY_NAME = "mosquitto"  # the batch policy this driver serves
CONTROL = "$CONTROL/dynamic-security/v1"
RESPONSE = CONTROL + "/response"
_EXISTS = ("already exists",)

_Waiter = tuple[threading.Event, list[Any]]


def _error(answer: dict[str, Any]) -> str | None:
    error = answer.get("error")
    return str(error) if error else None


class MosquittoDynsec:
    """PolicyDriver (and DenySet) over one persistent admin connection."""

    rights_from_certificate = True  # the qlink plugin reads the certificate's CN and OU

    def __init__(
        self, ca: CertificateAuthority, host: str, port: int, timeout_s: float = 5.0
    ) -> None:
        self._timeout = timeout_s
        self._lock = threading.Lock()
        self._pending: dict[str, _Waiter] = {}
        self._subscribed = threading.Event()
        try:
            self._client = connect_admin(
                ca,
                host,
                port,
                f"qlink-policy-{secrets.token_hex(4)}",
                on_connected=self._on_connected,
                configure=self._configure,
            )
        except MqttError as e:
            raise PolicyError(str(e)) from e
        if not self._subscribed.wait(timeout_s):
            self.close()
            raise PolicyError("the broker did not confirm the dynamic-security subscription")
        try:
            self.ensure_admin_role()
        except PolicyError:
            self.close()
            raise

    def _configure(self, client: mqtt.Client) -> None:
        client.on_message = self._on_message
        client.on_subscribe = lambda *_a: self._subscribed.set()

    def _on_connected(self, client: mqtt.Client) -> None:
        client.subscribe(RESPONSE, qos=1)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == control.RESPONSE:
            answer = control.parse_answer(bytes(msg.payload))
            if answer is None:
                log.warning("event=qlink_plugin_bad_response")
            else:
                self._deliver(answer.correlation, answer)
            return
        try:
            responses = json.loads(msg.payload)["responses"]
        except (ValueError, KeyError, TypeError):
            log.warning("event=dynsec_bad_response topic=%s", msg.topic)
            return
        for r in responses:
            corr = r.get("correlationData") if isinstance(r, dict) else None
            if isinstance(corr, str):
                self._deliver(corr, r)

    def _deliver(self, corr: str, answer: object) -> None:
        with self._lock:
            waiter = self._pending.get(corr)
        if waiter is not None:
            waiter[1].append(answer)
            waiter[0].set()

    def _exchange(
        self, topic: str, payloads: list[bytes], corrs: list[str], what: str
    ) -> list[Any]:
        """Publish `payloads` on `topic` in order and wait for the answer of each of `corrs`
        (one message may carry several); the answers in the order of `corrs`."""
        waiters: list[tuple[str, threading.Event, list[Any]]] = []
        with self._lock:
            for corr in corrs:
                waiter: _Waiter = (threading.Event(), [])
                self._pending[corr] = waiter
                waiters.append((corr, *waiter))
        try:
            for payload in payloads:
                info = self._client.publish(topic, payload, qos=1)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    raise PolicyError(
                        f"cannot send {what} to the broker ({mqtt.error_string(info.rc)})"
                    )
            deadline = time.monotonic() + self._timeout
            for _corr, done, _out in waiters:
                if not done.wait(max(0.0, deadline - time.monotonic())):
                    raise PolicyError(
                        f"the broker did not answer {what} within {self._timeout:.0f} s; retry"
                    )
        finally:
            with self._lock:
                for corr, _e, _o in waiters:
                    self._pending.pop(corr, None)
        return [out[0] for _c, _e, out in waiters]

    # -- dynamic security: the admin role ---------------------------------------------------
    def command(self, command: str, **fields: Any) -> str | None:
        """Send one command and wait for its answer; returns the plugin's error text or None."""
        return _error(self.request(command, **fields))

    def request(self, command: str, **fields: Any) -> dict[str, Any]:
        """Send one command and return the plugin's whole answer (`error`, `data`)."""
        return self.request_many([{"command": command, **fields}])[0]

    def request_many(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send commands in one message (one round trip; the plugin runs them in order) and
        return their answers in the same order."""
        corrs = [secrets.token_hex(8) for _ in commands]
        tagged = [{**c, "correlationData": k} for c, k in zip(commands, corrs, strict=True)]
        body = {"commands": tagged}
        names = "+".join(str(c["command"]) for c in commands)
        answers = self._exchange(CONTROL, [json.dumps(body).encode()], corrs, names)
        return [a if isinstance(a, dict) else {} for a in answers]

    def ensure_admin_role(self) -> None:
        """The admin role's ACLs, for a broker whose dynamic-security file predates some."""
        answers = self.request_many(
            [{"command": "addRoleACL", "rolename": ADMIN_ROLE, **acl} for acl in admin_acls()]
        )
        for answer in answers:
            error = _error(answer)
            if error is not None and not any(t in error.lower() for t in _EXISTS):
                raise PolicyError(f"the broker refused addRoleACL: {error}")

    # -- the qlink plugin: the denied set ---------------------------------------------------
    def plugin(self, verb: str, device_ids: Sequence[str] = ()) -> list[control.Answer]:
        """One request per MAX_IDS devices, sent together, every answer awaited; PolicyError
        if the plugin refused one (it then changed nothing for that request)."""
        corrs, payloads = [], []
        for part in list(control.chunks(device_ids)) or [[]]:
            corrs.append(secrets.token_hex(8))
            payloads.append(control.request(verb, corrs[-1], part))
        what = f"{verb} of {len(device_ids)} device(s)"
        answers: list[control.Answer] = self._exchange(control.CONTROL, payloads, corrs, what)
        for answer in answers:
            if answer.error is not None:
                raise PolicyError(f"the broker's qlink plugin refused {verb}: {answer.error}")
        return answers

    def deny_devices(self, device_ids: Sequence[str]) -> None:
        self.plugin("deny", device_ids)
        log.info("event=policy_denied devices=%d", len(device_ids))

    def restore_denials(self, device_ids: Sequence[str]) -> None:
        if device_ids:
            self.plugin("deny", device_ids)
        self.plugin("open")

    # -- PolicyDriver -----------------------------------------------------------------------
    def register_device(
        self, tenant: str, device_id: str, certificate_der: bytes | None = None
    ) -> None:
        # The certificate carries the rights; only a leftover denial could stand in the way.
        self.plugin("allow", [device_id])
        log.info("event=policy_registered device=%s tenant=%s", device_id, tenant)

    def disable_device(self, device_id: str) -> None:
        """Deny everything and drop the live connection. With `use_identity_as_username`
        Mosquitto 2.0 skips authentication, so the device can connect again: the plugin
        refuses it everything and drops that connection too (docs/security.md)."""
        self.deny_devices([device_id])

    def enable_device(self, device_id: str) -> None:
        """Out of the denied set (the plugin drops the live connection; the device reconnects
        with the rights of its certificate)."""
        self.plugin("allow", [device_id])

    def delete_device(self, device_id: str) -> None:
        """For revocation: denied for good (the certificate also goes on the CRL, which
        refuses its next TLS handshake)."""
        self.deny_devices([device_id])

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()
