"""Mosquitto: device rights from the certificate, exceptions in dynamic security.

A device's certificate (CN = device ID, issued only at onboarding) gives it the broker's pattern
ACL `qlink/+/%u/#`: its own topics, nothing else (host/server/broker.py). Registering a device
therefore changes nothing on the broker but clears any exception left for it; disabling or
revoking gives it a dynamic-security client with the deny-everything role and drops its live
connection. Onboarding costs the broker one look-up however large the fleet, where one client
and role per device made Mosquitto 2.0 rewrite a file that grows with the fleet on every device.

The tenant in a topic is not checked by the broker (a pattern ACL has no tenant to compare):
a device could publish under `qlink/<other tenant>/<its own ID>/`; the server's telemetry
intake keeps only messages whose tenant is the device's (host/server/telemetry.py).

Commands go to `$CONTROL/dynamic-security/v1` as JSON; the plugin answers on
`.../v1/response` with the same `correlationData`. Each call waits for its answer and checks
its `error`; "already exists" / "not found" answers make every operation idempotent.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from host.server.broker import DENY_ROLE, deny_role
from host.server.ca import CertificateAuthority
from host.server.mqtt import MqttError, connect_admin
from host.server.policy import PolicyError

log = logging.getLogger("qlink.policy")

POLICY_NAME = "mosquitto"  # the batch policy this driver serves
CONTROL = "$CONTROL/dynamic-security/v1"
RESPONSE = CONTROL + "/response"
_EXISTS = ("already exists",)
_MISSING = ("not found",)


def _error(answer: dict[str, Any]) -> str | None:
    error = answer.get("error")
    return str(error) if error else None


class MosquittoDynsec:
    """PolicyDriver over one persistent admin connection."""

    rights_from_certificate = True  # the pattern ACL on the certificate's CN

    def __init__(
        self, ca: CertificateAuthority, host: str, port: int, timeout_s: float = 5.0
    ) -> None:
        self._timeout = timeout_s
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[threading.Event, list[dict[str, Any]]]] = {}
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
            self.ensure_deny_role()
        except PolicyError:
            self.close()
            raise

    def _configure(self, client: mqtt.Client) -> None:
        client.on_message = self._on_message
        client.on_subscribe = lambda *_a: self._subscribed.set()

    def _on_connected(self, client: mqtt.Client) -> None:
        client.subscribe(RESPONSE, qos=1)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            responses = json.loads(msg.payload)["responses"]
        except (ValueError, KeyError, TypeError):
            log.warning("event=dynsec_bad_response topic=%s", msg.topic)
            return
        for r in responses:
            corr = r.get("correlationData") if isinstance(r, dict) else None
            with self._lock:
                waiter = self._pending.get(corr) if isinstance(corr, str) else None
            if waiter is not None:
                waiter[1].append(r)
                waiter[0].set()

    def command(self, command: str, **fields: Any) -> str | None:
        """Send one command and wait for its answer; returns the plugin's error text or None."""
        error = self.request(command, **fields).get("error")
        return str(error) if error else None

    def request(self, command: str, **fields: Any) -> dict[str, Any]:
        """Send one command and return the plugin's whole answer (`error`, `data`)."""
        return self.request_many([{"command": command, **fields}])[0]

    def request_many(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send commands in one message (one round trip; the plugin runs them in order) and
        return their answers in the same order."""
        waiters: list[tuple[str, threading.Event, list[dict[str, Any]]]] = []
        with self._lock:
            for _ in commands:
                corr = secrets.token_hex(8)
                waiter: tuple[threading.Event, list[dict[str, Any]]] = (threading.Event(), [])
                self._pending[corr] = waiter
                waiters.append((corr, *waiter))
        names = "+".join(str(c["command"]) for c in commands)
        try:
            body = {
                "commands": [
                    {**c, "correlationData": corr}
                    for c, (corr, _e, _o) in zip(commands, waiters, strict=True)
                ]
            }
            info = self._client.publish(CONTROL, json.dumps(body), qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise PolicyError(
                    f"cannot send {names} to the broker ({mqtt.error_string(info.rc)})"
                )
            deadline = time.monotonic() + self._timeout
            for _corr, done, _out in waiters:
                if not done.wait(max(0.0, deadline - time.monotonic())):
                    raise PolicyError(
                        f"the broker did not answer {names} within {self._timeout:.0f} s; retry"
                    )
        finally:
            with self._lock:
                for corr, _e, _o in waiters:
                    self._pending.pop(corr, None)
        return [out[0] for _c, _e, out in waiters]

    def _check(self, command: str, error: str | None, tolerated: tuple[str, ...]) -> None:
        if error is None or any(t in error.lower() for t in tolerated):
            return
        raise PolicyError(f"the broker refused {command}: {error}")

    def ensure_deny_role(self) -> None:
        """The deny role, for a broker whose dynamic-security file predates it."""
        role = deny_role()
        err = self.command("createRole", rolename=DENY_ROLE, acls=role["acls"])
        self._check("createRole", err, _EXISTS)

    def register_device(
        self, tenant: str, device_id: str, certificate_der: bytes | None = None
    ) -> None:
        # The certificate carries the rights; only a leftover exception (a deny entry, or a
        # client of an older per-device scheme) could stand in the way: remove it.
        self._clear(device_id)
        log.info("event=policy_registered device=%s tenant=%s", device_id, tenant)

    def _deny(self, device_id: str) -> None:
        """A client with the deny role for the device, its live connection dropped."""
        # Deleted and created again in one message (the plugin runs it as one step): whatever
        # the device had before, it ends with exactly the deny role. deleteClient drops the
        # live connection; disableClient marks the entry for operators reading the plugin.
        answers = self.request_many(
            [
                {"command": "deleteClient", "username": device_id},
                {
                    "command": "createClient",
                    "username": device_id,
                    "roles": [{"rolename": DENY_ROLE, "priority": 0}],
                },
                {"command": "disableClient", "username": device_id},
            ]
        )
        self._check("deleteClient", _error(answers[0]), _MISSING)
        self._check("createClient", _error(answers[1]), ())
        self._check("disableClient", _error(answers[2]), ())

    def disable_device(self, device_id: str) -> None:
        """Deny everything and kick. With `use_identity_as_username` Mosquitto 2.0 skips
        authentication, so a disabled client can reconnect: the deny role is what refuses it."""
        self._deny(device_id)

    def enable_device(self, device_id: str) -> None:
        """Remove the deny entry (the plugin drops the live connection; the device reconnects
        with the rights of its certificate)."""
        self._clear(device_id)

    def _clear(self, device_id: str) -> None:
        """No dynamic-security entry for the device (idempotent)."""
        self._check("deleteClient", self.command("deleteClient", username=device_id), _MISSING)

    def delete_device(self, device_id: str) -> None:
        """For revocation: the deny entry stays for good (the certificate also goes on the CRL,
        which refuses its next TLS handshake)."""
        self._deny(device_id)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()
