"""An external Mosquitto for the host tests, set up as docs/operator.md ("Targets") tells an
operator to: its own CA and broker certificate, the dynamic-security plugin with an admin user
and password (`mosquitto_ctrl dynsec init`), a device listener that trusts the qlink CA for
client certificates with `use_identity_as_username`, and an admin listener for the server's
user name and password login. It runs from its own configuration in a temporary directory.
"""

from __future__ import annotations

import json
import os
import pwd
import queue
import secrets
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from brokerutil import Listener

from host.server.broker import find_dynsec_plugin, free_port
from host.server.ca import CertificateAuthority
from host.server.mqtt import Login, connect
from host.server.targets import tls_context

ADMIN_USER = "operator-admin"


class ExternalBroker:
    def __init__(self, root: Path, qlink_ca: CertificateAuthority) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.ca = CertificateAuthority.load_or_create(root / "own-ca")  # not the qlink CA
        self.qlink_ca = qlink_ca
        self.password = secrets.token_urlsafe(12)
        self.password_file = root / "admin.password"
        self.password_file.write_text(self.password + "\n")
        self.dynsec_path = root / "dynamic-security.json"
        self.log_path = root / "mosquitto.log"
        self.port = free_port("127.0.0.1")
        self.admin_port = free_port("127.0.0.1")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def ca_pem_path(self) -> Path:
        """The CA devices trust for this broker (the target's `--ca`)."""
        return self.ca.root_pem_path

    def start(self) -> ExternalBroker:
        if not self.dynsec_path.exists():
            init = ["mosquitto_ctrl", "dynsec", "init", str(self.dynsec_path), ADMIN_USER]
            subprocess.run([*init, self.password], capture_output=True, check=True)
        broker_cert, broker_key = self.ca.cert_path("broker"), self.ca.key_path("broker")
        lines = [
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            "per_listener_settings false",
            "persistence false",
            "allow_anonymous false",
            "log_dest stderr",
            "log_type all",
            f"plugin {find_dynsec_plugin()}",
            f"plugin_opt_config_file {self.dynsec_path}",
            f"listener {self.port} 127.0.0.1",
            f"cafile {self.qlink_ca.bundle_path}",
            f"certfile {broker_cert}",
            f"keyfile {broker_key}",
            "require_certificate true",
            "use_identity_as_username true",
            f"listener {self.admin_port} 127.0.0.1",
            f"certfile {broker_cert}",
            f"keyfile {broker_key}",
        ]
        conf = self.root / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        mark = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                ["mosquitto", "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 10
        # "running" is logged once both listeners are bound (no event to wait on: a file).
        while b" running" not in self.log_path.read_bytes()[mark:]:
            assert self._proc.poll() is None, self.log_path.read_text()[-2000:]
            assert time.monotonic() < deadline, "the external broker did not start"
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            proc.wait(10)

    def login(self, password: str | None = None) -> Login:
        return Login(
            "127.0.0.1",
            self.admin_port,
            tls_context(self.ca.root_der()),
            ADMIN_USER,
            password or self.password,
        )

    def dynsec(self, command: str, **fields: Any) -> dict[str, Any]:
        """One dynamic-security command as the operator's admin; its answer."""
        answers: queue.Queue[dict[str, Any]] = queue.Queue()
        subscribed = threading.Event()

        def configure(c: mqtt.Client) -> None:
            c.on_subscribe = lambda *_a: subscribed.set()
            c.on_message = lambda _c, _u, m: answers.put(json.loads(m.payload)["responses"][0])

        client = connect(
            self.login(),
            f"test-dynsec-{secrets.token_hex(3)}",
            lambda c: c.subscribe("$CONTROL/dynamic-security/v1/response", 1),
            configure,
        )
        try:
            assert subscribed.wait(5)
            body = {"commands": [{"command": command, **fields}]}
            client.publish("$CONTROL/dynamic-security/v1", json.dumps(body), 1)
            return answers.get(timeout=5)
        finally:
            client.loop_stop()
            client.disconnect()


class Watcher(Listener):
    """The operator's admin connection, subscribed to every qlink topic of the broker (what
    `brokerutil.Listener` is on the managed broker: `until` proves what does not arrive)."""

    def __init__(self, broker: ExternalBroker) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        subscribed = threading.Event()

        def configure(c: mqtt.Client) -> None:
            c.on_message = lambda _c, _u, m: self.messages.put((m.topic, m.payload))
            c.on_subscribe = lambda *_a: subscribed.set()

        self.client = connect(
            broker.login(), "test-watcher", lambda c: c.subscribe("qlink/#", 1), configure
        )
        assert subscribed.wait(5)
