"""Mosquitto dynamic security: one role and one client per device, set over MQTT.

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

from host.server.ca import CertificateAuthority
from host.server.mqtt import MqttError, connect_admin
from host.server.policy import PolicyError, device_topic_prefix

log = logging.getLogger("qlink.policy")

CONTROL = "$CONTROL/dynamic-security/v1"
RESPONSE = CONTROL + "/response"
_EXISTS = ("already exists",)
_MISSING = ("not found",)


def device_role(device_id: str) -> str:
    return f"dev-{device_id}"


def device_acls(tenant: str, device_id: str) -> list[dict[str, Any]]:
    pattern = device_topic_prefix(tenant, device_id) + "/#"
    return [
        {"acltype": t, "topic": pattern, "priority": 0, "allow": True}
        for t in ("publishClientSend", "subscribePattern", "publishClientReceive")
    ]


def _error(answer: dict[str, Any]) -> str | None:
    error = answer.get("error")
    return str(error) if error else None


class MosquittoDynsec:
    """PolicyDriver over one persistent admin connection."""

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

    def register_device(
        self, tenant: str, device_id: str, certificate_der: bytes | None = None
    ) -> None:
        # The broker trusts every certificate of the CA; the client entry carries the rights.
        role = device_role(device_id)
        answers = self.request_many(
            [
                {"command": "createRole", "rolename": role, "acls": device_acls(tenant, device_id)},
                {
                    "command": "createClient",
                    "username": device_id,
                    "roles": [{"rolename": role, "priority": 0}],
                },
            ]
        )
        self._check("createRole", _error(answers[0]), _EXISTS)
        err = _error(answers[1])
        self._check("createClient", err, _EXISTS)
        if err is not None and role not in self._client_roles(device_id):
            # The client existed without its role (created by hand or half-deleted).
            err = self.command("addClientRole", username=device_id, rolename=role, priority=0)
            self._check("addClientRole", err, ())
        log.info("event=policy_registered device=%s tenant=%s", device_id, tenant)

    def _client_roles(self, device_id: str) -> set[str]:
        answer = self.request("getClient", username=device_id)
        self._check("getClient", answer.get("error"), ())
        try:
            roles = answer["data"]["client"]["roles"]
            return {str(r["rolename"]) for r in roles}
        except (KeyError, TypeError) as e:
            raise PolicyError("the broker's getClient answer has no role list") from e

    def disable_device(self, device_id: str) -> None:
        """Disable the client and take its role away. With `use_identity_as_username` Mosquitto
        2.0 skips authentication, so a disabled client could reconnect and keep its role's
        rights: without the role, the deny-by-default ACL refuses everything it does. Both
        commands kick the live connection."""
        role = device_role(device_id)
        answers = self.request_many(
            [
                {"command": "disableClient", "username": device_id},
                {"command": "removeClientRole", "username": device_id, "rolename": role},
            ]
        )
        self._check("disableClient", _error(answers[0]), ())
        self._check("removeClientRole", _error(answers[1]), ("not in this role", "not found"))

    def enable_device(self, device_id: str) -> None:
        role = device_role(device_id)
        answers = self.request_many(
            [
                {
                    "command": "addClientRole",
                    "username": device_id,
                    "rolename": role,
                    "priority": 0,
                },
                {"command": "enableClient", "username": device_id},
            ]
        )
        self._check("addClientRole", _error(answers[0]), ("already",))
        self._check("enableClient", _error(answers[1]), ())

    def delete_device(self, device_id: str) -> None:
        self._check("deleteClient", self.command("deleteClient", username=device_id), _MISSING)
        role = device_role(device_id)
        self._check("deleteRole", self.command("deleteRole", rolename=role), _MISSING)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()
