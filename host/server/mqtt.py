"""The server's own MQTT connections to a broker's admin side: to the managed broker with mutual
TLS and the admin certificate; to a broker the server does not run (an external Mosquitto
target) with TLS verified against that target's CA and a user name and password."""

from __future__ import annotations

import socket
import ssl
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class Login:
    """Where and how the server logs in to a broker's admin side: TLS verified by `context`
    (which holds the client certificate, if any) and, for a broker the server does not run,
    a user name and password (never shown: not in repr, logs or errors)."""

    host: str
    port: int
    context: ssl.SSLContext = field(repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def connect_admin(
    ca: CertificateAuthority,
    host: str,
    port: int,
    client_id: str,
    on_connected: Callable[[mqtt.Client], None] | None = None,
    configure: Callable[[mqtt.Client], None] | None = None,
    timeout_s: float = 10.0,
) -> mqtt.Client:
    """`connect` to the managed broker's admin listener with the admin certificate."""
    login = Login(host, port, admin_context(ca))
    return connect(login, client_id, on_connected, configure, timeout_s)


def connect(
    login: Login,
    client_id: str,
    on_connected: Callable[[mqtt.Client], None] | None = None,
    configure: Callable[[mqtt.Client], None] | None = None,
    timeout_s: float = 10.0,
) -> mqtt.Client:
    """Connect (TLS, MQTT 3.1.1), start the network thread and wait for the CONNACK.

    `on_connected` runs after every successful (re)connect: subscriptions go there so that
    they survive a broker restart. `configure` sets further callbacks before connecting.
    """
    host, port = login.host, login.port
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    client.tls_set_context(login.context)
    if login.username is not None:
        client.username_pw_set(login.username, login.password)
    connected = threading.Event()
    failure: list[str] = []

    def _on_connect(c: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object) -> None:
        if reason.is_failure:
            failure.append(str(reason))
            connected.set()
            return
        sock = c.socket()
        if isinstance(sock, socket.socket):  # an SSLSocket is one
            # Nagle would hold a publish made right after an acknowledgement for the peer's
            # delayed ACK (40 ms): commands re-sent on a device's `online` event are that.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if on_connected is not None:
            on_connected(c)
        connected.set()

    client.on_connect = _on_connect
    if configure is not None:
        configure(client)
    client.reconnect_delay_set(1, 5)
    refused = None
    # paho leaves open the socket whose TLS handshake failed (a broker certificate that the
    # CA does not verify): only the error's traceback holds it, so the error becomes a message
    # here and the socket is released as this block ends, its warning muted.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client.connect(host, port, keepalive=30)
        except (OSError, ssl.SSLError) as e:
            refused = f"cannot connect to the broker at {host}:{port}: {e}"
    if refused is not None:
        raise MqttError(refused)
    client.loop_start()
    if not connected.wait(timeout_s) or failure:
        client.loop_stop()
        client.disconnect()
        why = failure[0] if failure else "no answer"
        raise MqttError(f"the broker at {host}:{port} refused the admin connection: {why}")
    return client
