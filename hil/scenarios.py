"""Pieces the end-to-end scenarios share: watching a device's MQTT traffic from the server side,
pointing a board's stored broker address elsewhere (through a fault proxy), and reading the
agent's retry lines from its console.

`TelemetryTap` is a host MQTT client with the server's admin certificate (the broker lets it read
every qlink topic): it records each telemetry and event message of one device as it arrives.
"""

from __future__ import annotations

import json
import re
import secrets
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from hil import steps

if TYPE_CHECKING:
    from hil.emulated import EmulatedBoard

# The agent's retry line (firmware/agent/main.py): failures in a row and the wait it chose.
RETRY_LINE = re.compile(r"W agent: link failed \((\d+) in a row\): .*; retry in (\d+) ms")
# The agent's backoff (firmware/agent/main.py backoff_ms): base doubles from 1 s up to 60 s; the
# wait is half the base plus a uniform random part of up to the other half ("equal jitter").
BACKOFF_MIN_MS = 1000
BACKOFF_MAX_MS = 60000


class ScenarioError(RuntimeError):
    """A scenario step could not be carried out; the message says which and why."""


class _Exec(Protocol):
    def exec(self, code: str, timeout: float = 30.0) -> str: ...


@dataclass
class Message:
    t: float  # monotonic arrival time
    topic: str
    data: dict[str, Any]


class TelemetryTap:
    """Subscribes (QoS 1) to `qlink/+/<device_id>/#` as qlink-admin, on the admin listener of
    the broker of the server running on `data_dir` (its server.json names the port)."""

    def __init__(self, data_dir: Path, device_id: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.device_id = device_id
        self._lock = threading.Condition()
        self.messages: list[Message] = []
        ca_dir = data_dir / "ca"
        try:
            port = int(json.loads((data_dir / "server.json").read_text())["broker_admin_port"])
        except (OSError, ValueError, KeyError) as e:
            raise ScenarioError(f"no running qlink server on {data_dir}: {e}") from e
        host = "127.0.0.1"  # the admin listener is on the server's loopback
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_dir / "bundle.pem"))
        ctx.load_cert_chain(str(ca_dir / "admin.pem"), str(ca_dir / "admin.key"))
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"qlink-rig-tap-{secrets.token_hex(4)}",
            protocol=mqtt.MQTTv311,
        )
        self._client.tls_set_context(ctx)
        subscribed = threading.Event()
        self._client.on_connect = lambda c, *_: c.subscribe(f"qlink/+/{device_id}/#", qos=1)
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.on_message = self._on_message
        with steps.step("tap_subscribe", device=device_id[:16], broker=f"{host}:{port}"):
            try:
                self._client.connect(host, port, keepalive=30)
            except (OSError, ssl.SSLError) as e:
                raise ScenarioError(f"tap cannot reach the broker at {host}:{port}: {e}") from e
            self._client.loop_start()
            if not subscribed.wait(15):
                self.close()
                raise ScenarioError(
                    f"the broker at {host}:{port} did not confirm the tap's SUBSCRIBE"
                )

    def _on_message(self, _c: object, _u: object, msg: Any) -> None:
        try:
            data = json.loads(msg.payload)
        except ValueError:
            data = {"raw": msg.payload.hex()}
        with self._lock:
            self.messages.append(Message(time.monotonic(), msg.topic, data))
            self._lock.notify_all()

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()

    def telemetry(self) -> list[Message]:
        with self._lock:
            return [m for m in self.messages if m.topic.endswith("/telemetry")]

    def events(self, kind: str | None = None) -> list[Message]:
        """Event messages (docs/protocol.md), only those whose `event` is `kind` if given."""
        with self._lock:
            return [
                m
                for m in self.messages
                if m.topic.endswith("/event") and (kind is None or m.data.get("event") == kind)
            ]

    def seqs(self) -> list[int]:
        return [int(m.data["seq"]) for m in self.telemetry()]

    def wait_seq(self, seq: int, timeout: float) -> Message:
        """Wait until a telemetry message with seq >= `seq` has arrived; returns it."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for m in self.messages:
                    if m.topic.endswith("/telemetry") and m.data.get("seq", 0) >= seq:
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ScenarioError(
                        f"no telemetry with seq >= {seq} within {timeout:.0f} s; "
                        f"last seqs: {[m.data.get('seq') for m in self.messages[-10:]]}"
                    )
                self._lock.wait(min(left, 0.5))

    def wait_event(self, count: int, timeout: float, kind: str | None = None) -> Message:
        """Wait until `count` event messages (of `kind`) have arrived; returns the last."""
        deadline = time.monotonic() + timeout
        while True:
            ev = self.events(kind)
            if len(ev) >= count:
                return ev[count - 1]
            if time.monotonic() > deadline:
                raise ScenarioError(f"{len(ev)} event messages within {timeout:.0f} s, not {count}")
            time.sleep(0.1)


_REDIRECT = """
import json, os
p = 'data/onboard.json'
with open(p) as f:
    m = json.load(f)
m['broker']['host'] = %r
m['broker']['port'] = %d
if %r:
    m['policy']['telemetry_interval_ms'] = %r
with open(p + '.tmp', 'w') as f:
    json.dump(m, f)
os.rename(p + '.tmp', p)
print('broker', m['broker']['host'], m['broker']['port'])
"""


def redirect_broker(target: _Exec, host: str, port: int, interval_ms: int | None = None) -> None:
    """Rewrite the board's stored broker address (data/onboard.json) through its REPL, and with
    `interval_ms` the telemetry interval of the stored server policy.

    The device certificate binds the identity, not the broker's port, so a board that reaches
    the broker through a proxy on another port keeps its onboarding. The host name must still be
    one the broker's certificate names (TLS checks it)."""
    with steps.step("redirect_broker", host=host, port=port):
        out = target.exec(_REDIRECT % (host, port, bool(interval_ms), interval_ms))
    if f"broker {host} {port}" not in out:
        raise ScenarioError(f"the board did not confirm the new broker address: {out[-500:]!r}")


def retry_waits(lines: list[str]) -> list[tuple[int, int]]:
    """(failures in a row, wait in ms) of every retry line in a console log."""
    found = []
    for line in lines:
        m = RETRY_LINE.search(line)
        if m:
            found.append((int(m.group(1)), int(m.group(2))))
    return found


def backoff_bounds_ms(failures: int) -> tuple[int, int]:
    """The range the agent's wait after `failures` failures in a row must fall in."""
    base = min(BACKOFF_MIN_MS << min(max(failures - 1, 0), 16), BACKOFF_MAX_MS)
    return base // 2, base


@dataclass
class ProxiedBoard:
    """An onboarded emulated board whose MQTT link runs through a fault proxy, and a tap on its
    traffic straight at the broker (the server side of the link)."""

    board: Any  # hil.emulated.EmulatedBoard
    device_id: str
    proxy: Any  # hil.faultproxy.FaultProxy
    tap: TelemetryTap

    def close(self) -> None:
        self.tap.close()
        self.board.close()
        self.proxy.stop()


def registered_board(
    root: Path,
    server: Any,
    name: str,
    batch: str,
    *,
    tenant: str | None = None,
    interval_ms: int = 300,
) -> tuple[EmulatedBoard, dict[str, str]]:
    """A board flashed for `server`, enrolled, and imported into `batch` through the CLI, as a
    factory line would: (board, its public identity). Not powered on."""
    from hil.emulated import EmulatedBoard

    board = EmulatedBoard(root, name)
    board.flash(
        {"server": server.api_url, "root_ca": "ca.der", "telemetry_interval_ms": interval_ms},
        server.root_der(),
    )
    ident = board.enrol()
    csv = root / f"{name}.csv"
    csv.write_text(f"{ident['device_id']},{ident['public_key']}\n")
    server.cli("batch", "import", batch, *(["--tenant", tenant] if tenant else []), str(csv))
    return board, ident


def board_behind_proxy(
    root: Path, server: Any, name: str, batch: str, interval_ms: int = 300
) -> ProxiedBoard:
    """Flash, enrol and register a board in `batch`, let it onboard, then move its broker link
    behind a FaultProxy (through the rig: the REPL rewrites data/onboard.json) and power-cycle it.
    Returns once the board is connected through the proxy."""
    from hil.faultproxy import FaultProxy
    from hil.targets import EmulatedTarget

    board, ident = registered_board(root, server, name, batch, interval_ms=interval_ms)
    board.power_on()
    board.wait_for(r"published seq=1\b", timeout=180)
    stored = json.loads((board.fs / "data" / "onboard.json").read_text())["broker"]
    proxy = FaultProxy(("127.0.0.1", int(stored["port"]))).start()
    tap = None
    try:
        redirect_broker(EmulatedTarget(board), stored["host"], proxy.port, interval_ms)
        tap = TelemetryTap(server.data_dir, ident["device_id"])
        with steps.step("power_cycle", board=name):
            board.power_cycle()
        board.wait_for(rf"I mqtt: connected to \S+:{proxy.port}\b", timeout=60)
    except BaseException:
        if tap is not None:
            tap.close()
        board.close()
        proxy.stop()
        raise
    return ProxiedBoard(board, ident["device_id"], proxy, tap)


# The paths an update replaces (docs/ota.md "boot.py": the factory image's release roots).
RELEASE_ROOTS = ("agent/", "qdid/", "main.py", "board.py", "silicon.py")


def release_files(board: EmulatedBoard) -> dict[str, str]:
    """SHA-256 of every file of the board's release roots, by device path (boot.py's temporary
    files aside): what a manifest's `files` must match for the board to run that version."""
    import hashlib

    out: dict[str, str] = {}
    for p in board.fs.rglob("*"):
        rel = p.relative_to(board.fs).as_posix()
        if p.is_file() and rel.startswith(RELEASE_ROOTS) and not rel.endswith(".tmp"):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def count_lines(board: Any, pattern: str) -> int:
    rx = re.compile(pattern)
    return sum(1 for line in board.lines() if rx.search(line))


def wait_count(board: Any, pattern: str, n: int, timeout: float) -> None:
    """Wait until at least `n` console lines of this power cycle match `pattern`."""
    deadline = time.monotonic() + timeout
    while count_lines(board, pattern) < n:
        if time.monotonic() > deadline:
            raise ScenarioError(
                f"{count_lines(board, pattern)} console lines matching {pattern!r} within "
                f"{timeout:.0f} s, not {n}. Console tail:\n" + "\n".join(board.lines()[-30:])
            )
        time.sleep(0.1)


__all__ = [
    "BACKOFF_MAX_MS",
    "BACKOFF_MIN_MS",
    "Message",
    "ProxiedBoard",
    "ScenarioError",
    "TelemetryTap",
    "backoff_bounds_ms",
    "board_behind_proxy",
    "count_lines",
    "redirect_broker",
    "retry_waits",
    "wait_count",
]
