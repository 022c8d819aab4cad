"""A managed Mosquitto: the server writes its configuration, starts it and stops it.

The broker runs from `/usr/sbin/mosquitto` with a config under `data_dir/broker/`; it is never
the system service. TLS with client certificates is mandatory; the certificate's CN becomes the
MQTT user name.

Two listeners. Devices use the public one: `use_username_as_clientid` makes a device's MQTT
client identifier its certificate's CN whatever it asks for, so a device can neither close
another device's connection (a CONNECT with a taken client identifier closes the old one) nor
resume its stored session. The server's own admin clients (several, one certificate) use a
second listener on the loopback whose only trust anchor is that self-signed admin certificate:
no device certificate passes its handshake, and the admin's never passes the devices'.

Rights, asked in this order (Mosquitto asks its plugins in configuration order, then the
acl_file; the first answer that is not "defer" ends the check):
1. The qlink plugin (host/server/brokerplugin/qlink_acl.c). A device certificate carries the
   tenant as its OU (CN = device ID): the plugin lets such a device publish only
   `qlink/<tenant>/<id>/telemetry` and `.../event` and subscribe to and receive only
   `qlink/<tenant>/<id>/cmd`, and refuses everything else (a foreign SUBSCRIBE gets SUBACK
   0x80). It also holds the denied set: disabled and revoked devices are refused everything
   and their connections dropped. The set lives in broker memory; the server fills it at start
   (policy `reapply_denials`) and until then the plugin refuses every device.
2. The dynamic-security plugin holds the server's admin client alone: its role manages both
   plugins and reads every qlink topic; it may publish on the command channel (`cmd`) too. The
   plugin keeps its state in `dynamic-security.json`, written here when missing; the deny
   entries of the scheme before the qlink plugin (one client per denied device and the
   `qlink-deny` role) are dropped from it at start, as the denied set replaces them.
3. The acl_file pattern `qlink/+/%u/#` judges a device whose certificate has no OU (issued
   before the tenant was written in): its own ID's topics in any tenant, until it renews.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import json
import logging
import os
import pwd
import resource
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from host.server import ServerError
from host.server.brokerplugin import plugin_path
from host.server.brokerplugin.control import CONTROL as QLINK_CONTROL
from host.server.ca import ADMIN_CN, CertificateAuthority
from host.server.deviceid import is_device_id
from host.server.files import atomic_write

log = logging.getLogger("qlink.broker")

MOSQUITTO = "/usr/sbin/mosquitto"
_DYNSEC_GLOB = "/usr/lib/*/mosquitto_dynamic_security.so"
ADMIN_ROLE = "qlink-admin"
_LEGACY_DENY_ROLE = "qlink-deny"  # the per-device deny scheme's role, dropped at start
ADMIN_HOST = "127.0.0.1"  # the admin listener: the server and its managed broker share a host
DEVICE_PATTERN = "qlink/+/%u/#"  # %u: the MQTT user name, which is the certificate CN
CONTROL_TOPIC = "$CONTROL/dynamic-security/#"
COMMAND_TOPICS = "qlink/+/+/cmd"  # the command channel: the server alone publishes there
# Mosquitto 2.0 logs this and exits when its listener's port is taken (bind(2): EADDRINUSE).
_ADDRESS_IN_USE = b"Error: Address already in use"
_RUNNING = b" running\n"  # "mosquitto version 2.0.x running", after its listeners are bound


class BrokerError(ServerError):
    pass


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the broker's child process before exec: the kernel sends it SIGTERM when the server
    dies, even by SIGKILL (prctl(2) PR_SET_PDEATHSIG), so no broker outlives its server."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    # Mosquitto 2.0 never raises its own descriptor limit: at the soft limit it accepts and
    # closes every new connection with only a log warning, so a host's usual 1024 would cap
    # the fleet near a thousand devices. The hard limit is what the system allows us.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _is_our_broker(pid: int, config: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(config).encode() in cmdline


def find_dynsec_plugin() -> str:
    found = sorted(glob.glob(_DYNSEC_GLOB))
    if not found:
        raise BrokerError(
            "the Mosquitto dynamic-security plugin is missing; install Debian's mosquitto package"
        )
    return found[0]


def free_port(host: str) -> int:
    """A port the OS considers free right now (the broker binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def admin_acls() -> list[dict[str, object]]:
    """The admin role: it manages both plugins, reads every qlink topic and sends commands."""
    return [
        {"acltype": "publishClientSend", "topic": CONTROL_TOPIC, "allow": True},
        {"acltype": "publishClientReceive", "topic": CONTROL_TOPIC, "allow": True},
        {"acltype": "subscribePattern", "topic": CONTROL_TOPIC, "allow": True},
        # The qlink plugin answers the requesting client alone: no subscription to allow.
        {"acltype": "publishClientSend", "topic": QLINK_CONTROL, "allow": True},
        {"acltype": "publishClientSend", "topic": COMMAND_TOPICS, "allow": True},
        {"acltype": "subscribePattern", "topic": "qlink/#", "allow": True},
        {"acltype": "publishClientReceive", "topic": "qlink/#", "allow": True},
        {"acltype": "unsubscribePattern", "topic": "#", "allow": True},
    ]


def initial_dynsec() -> dict[str, object]:
    """The admin client and its role; everything else falls through to the device pattern."""
    return {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": True,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": [
            {"username": ADMIN_CN, "textname": "qlink server", "roles": [{"rolename": ADMIN_ROLE}]}
        ],
        "groups": [],
        "roles": [{"rolename": ADMIN_ROLE, "acls": admin_acls()}],
    }


def drop_device_entries(doc: dict[str, Any]) -> bool:
    """Remove from a dynamic-security document what the per-device deny scheme left (a client
    per denied device, the deny role); True if there was any. The store's denials reach the
    qlink plugin at start instead."""
    clients, roles = doc.get("clients"), doc.get("roles")
    if not isinstance(clients, list) or not isinstance(roles, list):
        return False
    kept_clients = [c for c in clients if not (isinstance(c, dict) and _is_device_entry(c))]
    kept_roles = [
        r for r in roles if not (isinstance(r, dict) and r.get("rolename") == _LEGACY_DENY_ROLE)
    ]
    if len(kept_clients) == len(clients) and len(kept_roles) == len(roles):
        return False
    doc["clients"], doc["roles"] = kept_clients, kept_roles
    return True


def _is_device_entry(client: dict[str, Any]) -> bool:
    return is_device_id(client.get("username"))


class ManagedBroker:
    """One Mosquitto process with its own config; `start()` returns once it accepts TCP."""

    def __init__(
        self,
        broker_dir: Path,
        ca: CertificateAuthority,
        host: str = "127.0.0.1",
        port: int = 0,
        admin_port: int = 0,
    ) -> None:
        self.dir = broker_dir
        self.ca = ca
        self.host = host
        self.port = port
        self.admin_port = admin_port  # on ADMIN_HOST; 0: a free one at start
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.dir / "mosquitto.conf"

    @property
    def dynsec_path(self) -> Path:
        return self.dir / "dynamic-security.json"

    @property
    def acl_path(self) -> Path:
        return self.dir / "acl.conf"

    @property
    def log_path(self) -> Path:
        return self.dir / "mosquitto.log"

    @property
    def pid_path(self) -> Path:
        return self.dir / "mosquitto.pid"

    def stop_stale(self, timeout_s: float = 5.0) -> bool:
        """Stop a broker a previous server left running on this directory (one started before
        the parent-death signal, or by a server whose stop was cut short). True if there was one."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return False
        if not _is_our_broker(pid, self.config_path):
            return False
        log.warning("event=broker_stale pid=%d action=terminate", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _is_our_broker(pid, self.config_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _is_our_broker(pid, self.config_path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return True

    def write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        if not self.dynsec_path.exists():
            atomic_write(self.dynsec_path, json.dumps(initial_dynsec(), indent=2).encode(), 0o600)
        else:
            self._drop_device_entries()
        acl = "# written by qlink on every start: a device may use its own topics only\n"
        atomic_write(self.acl_path, f"{acl}pattern readwrite {DEVICE_PATTERN}\n".encode(), 0o600)
        lines = [
            "# written by qlink on every start; edits are lost",
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            "per_listener_settings false",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp true",
            "allow_anonymous false",
            # First: its answer about a device ends the check (see the module docstring).
            f"plugin {plugin_path()}",
            f"plugin_opt_admin {ADMIN_CN}",
            f"plugin {find_dynsec_plugin()}",
            f"plugin_opt_config_file {self.dynsec_path}",
            f"acl_file {self.acl_path}",
            f"listener {self.port} {self.host}",
            "protocol mqtt",
            f"cafile {self.ca.bundle_path}",
            f"certfile {self.ca.cert_path('broker')}",
            f"keyfile {self.ca.key_path('broker')}",
            "require_certificate true",
            # Revoked certificates fail the TLS handshake; SIGHUP makes it re-read the file.
            f"crlfile {self.ca.crl_pem_path}",
            "use_identity_as_username true",
            # The client identifier is the certificate's CN: see the module docstring.
            "use_username_as_clientid true",
            "set_tcp_nodelay true",
            f"listener {self.admin_port} {ADMIN_HOST}",
            "protocol mqtt",
            f"cafile {self.ca.cert_path('admin')}",
            f"certfile {self.ca.cert_path('broker')}",
            f"keyfile {self.ca.key_path('broker')}",
            "require_certificate true",
            "use_identity_as_username true",
            "set_tcp_nodelay true",
        ]
        atomic_write(self.config_path, ("\n".join(lines) + "\n").encode(), 0o600)

    def _drop_device_entries(self) -> None:
        """The plugin's file without the per-device deny scheme's entries (the broker is not
        running: the plugin owns the file only while it runs)."""
        try:
            doc = json.loads(self.dynsec_path.read_bytes())
        except (OSError, ValueError):
            return  # the plugin reports a file it cannot read itself
        if isinstance(doc, dict) and drop_device_entries(doc):
            atomic_write(self.dynsec_path, json.dumps(doc, indent=2).encode(), 0o600)
            log.info("event=broker_dynsec_migrated dropped=per_device_deny_entries")

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the broker. Call it from the thread that lives as long as the server (the main
        thread): the parent-death signal follows the thread that started the child."""
        self.stop_stale()
        if not self.ca.crl_pem_path.exists():  # a new CA: nothing revoked yet
            self.ca.publish_crl([])
        if self.port == 0:
            self.port = free_port(self.host)
        if self.admin_port == 0:
            self.admin_port = free_port(ADMIN_HOST)
        self.write_config()
        log_file = self.log_path.open("ab")
        log_start = log_file.tell()  # this start's lines begin here
        try:
            self._proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                preexec_fn=die_with_parent,  # only prctl: async-signal-safe
            )
        finally:
            log_file.close()
        atomic_write(self.pid_path, f"{self._proc.pid}\n".encode())
        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc.poll() is not None:
                if _ADDRESS_IN_USE in self._log_since(log_start):
                    raise BrokerError(
                        f"port {self.port} on {self.host} is in use by another program; "
                        "choose another with --broker-port"
                    )
                raise BrokerError(
                    f"mosquitto exited with status {self._proc.returncode} at start; "
                    f"see {self.log_path}:\n{self.log_tail()}"
                )
            # "running" is logged once its listener is bound: a connection alone could reach
            # another program squatting on the port while mosquitto is still failing to bind.
            if _RUNNING in self._log_since(log_start):
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection((self.host, self.port), timeout=0.5),
                ):
                    break
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(
                    f"mosquitto did not accept connections on {self.host}:{self.port} within "
                    f"{timeout_s:.0f} s; see {self.log_path}"
                )
            time.sleep(0.05)
        log.info(
            "event=broker_started pid=%d port=%d admin_port=%d",
            self._proc.pid,
            self.port,
            self.admin_port,
        )

    def _log_since(self, offset: int) -> bytes:
        with self.log_path.open("rb") as f:
            f.seek(offset)
            return f.read()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self, timeout_s: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            with contextlib.suppress(FileNotFoundError):
                self.pid_path.unlink()
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()
        log.info("event=broker_stopped status=%s", proc.returncode)

    def reload(self) -> bool:
        """Make the broker re-read its CRL (SIGHUP); False when it is not running."""
        return reload_broker(self.dir)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None


def reload_broker(broker_dir: Path) -> bool:
    """SIGHUP the broker that runs on `broker_dir` (from any process: the CLI, an API worker),
    so it re-reads the CRL. False when none runs there."""
    try:
        pid = int((broker_dir / "mosquitto.pid").read_text().strip())
    except (OSError, ValueError):
        return False
    if not _is_our_broker(pid, broker_dir / "mosquitto.conf"):
        return False
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return False
    log.info("event=broker_reload pid=%d reason=crl", pid)
    return True
