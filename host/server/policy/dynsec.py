"""A client of Mosquitto's dynamic-security plugin over one admin connection: JSON commands on
`$CONTROL/dynamic-security/v1`, answers on `.../v1/response` matched by `correlationData`
(Mosquitto's plugins/dynamic-security/README.md).

The plugin drops the connections of every client whose rights a command changes, the sender's
own included (it "kicks" by user name). So a lost connection fails the requests waiting on it
at once rather than at their timeout, and `ready` tells when the connection (re)made by paho
is subscribed again.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from host.server.mqtt import Login, MqttError, connect
from host.server.policy import PolicyError

log = logging.getLogger("qlink.policy.dynsec")

CONTROL = "$CONTROL/dynamic-security/v1"
RESPONSE = CONTROL + "/response"
_GONE = object()  # in place of an answer: the connection dropped before it came


def _hint(error: str) -> str:
    """What to check for a failed login, by what failed."""
    if "refused the admin connection" in error:
        return "check the admin user name and its password"
    if "certificate verify failed" in error:
        return "check the CA given for it (the one that issued the broker's certificate)"
    return "check that it runs and its host name and admin port"


def error_of(answer: dict[str, Any]) -> str | None:
    """The plugin's error text of an answer, None when the command succeeded."""
    error = answer.get("error")
    return str(error) if error else None


class DynsecClient:
    """One admin connection to a Mosquitto's dynamic-security plugin. `what` names the broker
    in every error ("target ext1 at host:port")."""

    def __init__(self, login: Login, what: str, timeout_s: float = 5.0) -> None:
        self.what = what
        self._timeout = timeout_s
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[threading.Event, list[Any]]] = {}
        self.ready = threading.Event()  # connected, and subscribed to the answers
        self._refused = False
        try:
            self._client = connect(
                login,
                f"qlink-dynsec-{secrets.token_hex(4)}",
                on_connected=self._on_connected,
                configure=self._configure,
            )
        except MqttError as e:
            raise PolicyError(f"{what}: {e}; {_hint(str(e))}") from e
        if not self.ready.wait(timeout_s) or self._refused:
            self.close()
            raise PolicyError(
                f"{what} refused the subscription to {RESPONSE}; the admin user needs the "
                "dynamic-security admin role (mosquitto_ctrl dynsec init makes one)"
            )

    @staticmethod
    def _on_connected(client: mqtt.Client) -> None:
        client.subscribe(RESPONSE, qos=1)

    def _configure(self, client: mqtt.Client) -> None:
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect

    def _on_subscribe(
        self, _c: mqtt.Client, _u: object, _mid: int, codes: list[Any], _p: object
    ) -> None:
        self._refused = any(c.is_failure for c in codes)
        self.ready.set()

    def _on_disconnect(self, *_args: object) -> None:
        self.ready.clear()
        with self._lock:
            waiting = list(self._pending.values())
        for done, out in waiting:  # their answers will not come on this connection
            out.append(_GONE)
            done.set()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            responses = json.loads(msg.payload)["responses"]
        except (ValueError, KeyError, TypeError):
            log.warning("event=dynsec_bad_response what=%s", self.what)
            return
        for r in responses if isinstance(responses, list) else ():
            corr = r.get("correlationData") if isinstance(r, dict) else None
            with self._lock:
                waiter = self._pending.get(corr) if isinstance(corr, str) else None
            if waiter is not None:
                waiter[1].append(r)
                waiter[0].set()

    def send(self, commands: list[dict[str, Any]]) -> None:
        """Publish commands without waiting for their answers (a change that drops this
        connection: its answer may never come)."""
        info = self._client.publish(CONTROL, json.dumps({"commands": commands}), qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise PolicyError(f"{self.what}: cannot send ({mqtt.error_string(info.rc)}); retry")

    def request(self, command: str, **fields: Any) -> dict[str, Any]:
        return self.request_many([{"command": command, **fields}])[0]

    def request_many(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send commands in one message (the plugin runs them in order) and return their
        answers in the same order; PolicyError when the connection drops or time runs out."""
        corrs = [secrets.token_hex(8) for _ in commands]
        waiters: list[tuple[threading.Event, list[Any]]] = [
            (threading.Event(), []) for _ in commands
        ]
        names = "+".join(str(c["command"]) for c in commands[:3])
        with self._lock:
            self._pending.update(zip(corrs, waiters, strict=True))
        try:
            self.send([{**c, "correlationData": k} for c, k in zip(commands, corrs, strict=True)])
            deadline = time.monotonic() + self._timeout
            for done, _out in waiters:
                if not done.wait(max(0.0, deadline - time.monotonic())):
                    raise PolicyError(
                        f"{self.what} did not answer {names} within {self._timeout:.0f} s; retry"
                    )
        finally:
            with self._lock:
                for corr in corrs:
                    self._pending.pop(corr, None)
        answers = [out[0] for _done, out in waiters]
        if any(a is _GONE for a in answers):
            raise PolicyError(f"{self.what} dropped the admin connection during {names}; retry")
        return [a if isinstance(a, dict) else {} for a in answers]

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()
