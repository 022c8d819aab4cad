"""The server's own MQTT connections to its broker: mutual TLS with the admin certificate."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from host.server import ServerError
from host.server.ca import CertificateAuthority


class MqttError(ServerError):
    pass


def admin_context(ca: CertificateAuthority) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca.bundle_path))
    ctx.load_cert_chain(str(ca.cert_path("admin")), str(ca.key_path("admin")))
    return ctx


def connect_admin(
    ca: CertificateAuthority,
    host: str,
    port: int,
    client_id: str,
    on_connected: Callable[[mqtt.Client], None] | None = None,
    configure: Callable[[mqtt.Client], None] | None = None,
    timeout_s: float = 10.0,
) -> mqtt.Client:
    """Connect (mTLS, MQTT 3.1.1), start the network thread and wait for the CONNACK.

    `on_connected` runs after every successful (re)connect: subscriptions go there so that
    they survive a broker restart. `configure` sets further callbacks before connecting.
    """
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    client.tls_set_context(admin_context(ca))
    connected = threading.Event()
    failure: list[str] = []

    def _on_connect(c: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object) -> None:
        if reason.is_failure:
            failure.append(str(reason))
        elif on_connected is not None:
            on_connected(c)
        connected.set()

    client.on_connect = _on_connect
    if configure is not None:
        configure(client)
    client.reconnect_delay_set(1, 5)
    try:
        client.connect(host, port, keepalive=30)
    except (OSError, ssl.SSLError) as e:
        raise MqttError(f"cannot connect to the broker at {host}:{port}: {e}") from e
    client.loop_start()
    if not connected.wait(timeout_s) or failure:
        client.loop_stop()
        client.disconnect()
        why = failure[0] if failure else "no answer"
        raise MqttError(f"the broker at {host}:{port} refused the admin connection: {why}")
    return client
