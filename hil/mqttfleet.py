"""Many simulated devices held connected to the broker at once, from one process.

Each device is a `SimDevice` identity with the certificate its onboarding returned, speaking
MQTT 3.1.1 (OASIS Standard, 29 October 2014; section numbers below are that document's) over
TLS with asyncio and `ssl`: one event loop for every device, where paho (hil/simdevice.py)
runs a network thread per client, so one process holds a fleet of ten thousand.

A device does what the firmware agent does (docs/protocol.md "Broker", "Command channel"):
- CONNECT with its certificate, SUBSCRIBE to its `cmd` topic at QoS 1, then the `online` event;
  once telemetry is started, the documented telemetry payload at QoS 1 every interval (the first
  at a random point of it, so a fleet does not publish in step); PINGREQ when it has sent nothing
  for half its keep-alive.
- A command: the signature checked with the command signer's key (the signer's certificate
  checked against the pinned root and for its one purpose), then the body's members, its
  `device_id`, `exp` and `seq`; a refused one is reported (`command_rejected`), an accepted one
  acknowledged (`accepted`, then `done`). `ping` is done at once; `renew` closes the session,
  runs hello + proof, reconnects with the new certificate and reports `done` (or `failed` with
  the documented reason). The kinds that need a device's identity or storage (`transfer`,
  `reenrol`, `decommission`, `broker`) fail with `unknown_kind`, as in a firmware without them.
- A connection the broker drops is recorded with its time on CLOCK_MONOTONIC, which every
  process of the machine shares, so another process can measure revocation latency against its
  own clock. A dropped device stays off until it is asked to connect again: a benchmark counts
  drops, a revocation test expects them.

The packets are hil/mqttwire.py's and the command checks hil/commandcheck.py's.

`FleetProcess` runs a fleet in a process of its own and calls its methods over a pipe, so that
the caller's work (a use case, polling a database) does not share the fleet's interpreter lock.

Descriptors: one per connection; `raise_nofile()` lifts the soft limit to the hard one.
Memory: about 60 KiB per connected device (bench/fleet_online.py, `fleet_process_rss`), of
which some 24 KiB is its SSL context (its certificate, key and pinned root).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
import multiprocessing
import os
import random
import resource
import ssl
import time
from collections import Counter
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hil.commandcheck import (
    check_command,
    signer_key,
)
from hil.mqttwire import (
    _CONNACK,
    _PINGRESP,
    _PUBACK,
    _PUBLISH,
    _SUBACK,
    _SUBACK_FAILURE,
    _TLS_READ,
    DISCONNECT,
    PINGREQ,
    MqttProtocolError,
    PacketReader,
    connect_packet,
    parse_publish,
    puback_packet,
    publish_packet,
    subscribe_packet,
)
from hil.simdevice import ApiResponse, OnboardFailed, SimDevice, root_context


# -- one device -------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceSpec:
    """What a device process needs of an onboarded device: its identity (the private key as
    PKCS#8 DER, so it crosses a process boundary) and its onboarding answer."""

    api_url: str
    root_der: bytes
    key_der: bytes
    answer: dict[str, Any]

    @classmethod
    def of(cls, device: SimDevice, answer: ApiResponse | dict[str, Any]) -> DeviceSpec:
        body = answer.body if isinstance(answer, ApiResponse) else answer
        der = device.key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cls(device.api_url, device.root_der, der, body)

    def sim(self) -> SimDevice:
        key = serialization.load_der_private_key(self.key_der, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return SimDevice(self.api_url, self.root_der, key)


class ConnectFailed(Exception):
    """A connection that did not reach the `online` state; `outcome` names how it ended:
    `tls_refused` (the handshake or the certificate refused by the broker's alert), `reset` or
    `closed` (the broker reset or closed the connection before accepting it: with TLS 1.3 the
    client's first bytes may already be on their way when the broker refuses its certificate,
    and the reset then overtakes the alert), `refused:<return code>` (CONNACK, 3.2.2.3),
    `subscribe_refused` (SUBACK 0x80), `timeout`, or `error`."""

    def __init__(self, outcome: str, detail: str = "") -> None:
        super().__init__(f"{outcome}: {detail}" if detail else outcome)
        self.outcome = outcome


@dataclass
class CommandRecord:
    seq: int | None
    kind: str | None
    status: str  # accepted, done, failed, or the rejection reason
    received_at: float  # CLOCK_MONOTONIC
    answered_at: float | None = None  # when the last acknowledgement went out


class _Link(asyncio.Protocol):
    """One connection of a device: TCP from asyncio, TLS over memory BIOs here, MQTT framing.

    TLS is done here rather than by asyncio's SSL transport, which keeps a 256 KiB read buffer
    per connection (asyncio.sslproto): a fleet of thousands would spend gigabytes on buffers.
    OpenSSL's own record buffers are all a connection holds here."""

    def __init__(self, device: FleetDevice, context: ssl.SSLContext, server_hostname: str) -> None:
        self.device = device
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.reader = PacketReader()
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self._in, self._out, server_hostname=server_hostname)
        self.handshaken = False
        self.tls_error: ssl.SSLError | None = None
        self.subscribe_id = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._handshake()

    def _flush(self) -> None:
        data = self._out.read()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _handshake(self) -> None:
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except ssl.SSLError as e:
            self._tls_failed(e)
            return
        self.handshaken = True
        self._flush()
        self.send(connect_packet(self.device.device_id, self.device.fleet.keepalive_s))

    def _tls_failed(self, e: ssl.SSLError) -> None:
        """The broker refused the handshake or the certificate (an alert), or broke TLS."""
        self.tls_error = e
        self._flush()  # our alert, if any
        self._fail(ConnectFailed("tls_refused", e.reason or str(e)))
        if self.transport is not None:
            self.transport.close()

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.tls.write(data)
            self._flush()
            self.device.last_sent = time.monotonic()

    def data_received(self, data: bytes) -> None:
        self._in.write(data)
        if not self.handshaken:
            self._handshake()
            if not self.handshaken:
                return
        plain = []
        try:
            while chunk := self.tls.read(_TLS_READ):
                plain.append(chunk)
        except ssl.SSLWantReadError:
            pass  # every whole record is read
        except ssl.SSLZeroReturnError:  # the broker's close_notify
            assert self.transport is not None
            self.transport.close()
        except ssl.SSLError as e:
            self._tls_failed(e)
        self._flush()
        try:
            for first, body in self.reader.feed(b"".join(plain)):
                self._packet(first, body)
        except MqttProtocolError as e:
            self._fail(ConnectFailed("error", str(e)))
            assert self.transport is not None
            self.transport.close()

    def _fail(self, why: ConnectFailed) -> None:
        if not self.ready.done():
            self.ready.set_exception(why)

    def _packet(self, first: int, body: bytes) -> None:
        kind = first & 0xF0
        dev = self.device
        if kind == _PUBLISH:
            topic, qos, packet_id, payload = parse_publish(first, body)
            if qos == 1:
                self.send(puback_packet(packet_id))
            if topic == dev.topics["cmd"]:
                dev.on_command(payload)
        elif kind == _PUBACK:
            dev.on_puback(int.from_bytes(body[:2], "big"))
        elif kind == _CONNACK:
            code = body[1] if len(body) >= 2 else 0xFF
            if code != 0:
                self._fail(ConnectFailed(f"refused:{code}"))
                return
            self.subscribe_id = dev.next_packet_id()
            self.send(subscribe_packet(self.subscribe_id, dev.topics["cmd"], 1))
        elif kind == _SUBACK:
            if body[2:3] == bytes([_SUBACK_FAILURE]):
                self._fail(ConnectFailed("subscribe_refused"))
                return
            if not self.ready.done():
                self.ready.set_result(None)
        elif kind != _PINGRESP:
            self._fail(ConnectFailed("error", f"unexpected packet type {first:#04x}"))

    def eof_received(self) -> bool | None:
        return None  # close the transport: the broker has nothing more to say

    def connection_lost(self, exc: Exception | None) -> None:
        how = "reset" if isinstance(exc, ConnectionResetError) else "closed"
        self._fail(ConnectFailed(how, str(exc or "end of stream")))
        self.device.on_lost(self, self.tls_error or exc)


class FleetDevice:
    """A device's state across its connections."""

    def __init__(self, fleet: MqttFleet, spec: DeviceSpec) -> None:
        self.fleet = fleet
        self.spec = spec
        self.sim = spec.sim()
        self.device_id = self.sim.device_id
        self.answer = spec.answer
        self.topics: dict[str, str] = dict(spec.answer["topics"])
        self.signer = _signer_of(spec.answer, spec.root_der)
        self.link: _Link | None = None
        self.context: ssl.SSLContext | None = None
        self.closing = False
        self.connected_at: float | None = None
        self.dropped_at: float | None = None
        self.drop_reason: str | None = None
        self.dropped = asyncio.Event()
        self.cmd_seq = 0  # the last command accepted ("persisted" before it runs)
        self.seq = 0  # telemetry
        self.started = time.monotonic()
        self.last_sent = 0.0
        self.inflight: set[int] = set()
        self._packet_id = 0
        self.timer: asyncio.TimerHandle | None = None
        self.publish_log: list[tuple[int, float]] | None = None  # (seq, wall time): sampled
        self.commands: list[CommandRecord] = []
        self.renewals = 0

    @property
    def online(self) -> bool:
        return self.link is not None and self.link.ready.done() and not self.dropped.is_set()

    def next_packet_id(self) -> int:
        self._packet_id = self._packet_id % 0xFFFF + 1  # 2.3.1: non-zero 16-bit
        return self._packet_id

    def _ssl_context(self) -> ssl.SSLContext:
        if self.context is None:
            self.context = self.fleet.context_for(self)
        return self.context

    async def connect(self, timeout_s: float) -> None:
        """Connect, subscribe, announce `online`; raises ConnectFailed."""
        loop = asyncio.get_running_loop()
        host, port = self.fleet.address_for(self)
        link = _Link(self, self._ssl_context(), str(self.answer["broker"]["host"]))
        self.closing = False
        try:
            async with asyncio.timeout(timeout_s):
                await loop.create_connection(lambda: link, host, port)
                self.link = link
                await link.ready
        except TimeoutError:
            self._abandon(link)
            raise ConnectFailed("timeout") from None
        except OSError as e:
            self._abandon(link)
            raise ConnectFailed("closed", str(e)) from None
        except ConnectFailed:
            self._abandon(link)
            raise
        self.dropped = asyncio.Event()
        self.dropped_at = self.drop_reason = None
        self.connected_at = time.monotonic()
        online = {"event": "online", "fw": self.fleet.fw, "cmd_seq": self.cmd_seq}
        self.publish_event({**online, "puf": dict(self.fleet.puf)})
        self.fleet.on_online(self)

    def _abandon(self, link: _Link) -> None:
        self.closing = True
        if link.transport is not None:
            link.transport.abort()
        if self.link is link:
            self.link = None

    def close(self) -> None:
        """Leave politely (DISCONNECT, 3.14); not recorded as a drop."""
        self.closing = True
        self.cancel_timer()
        link, self.link = self.link, None
        if link is not None and link.transport is not None:
            link.send(DISCONNECT)
            link.transport.close()

    def on_lost(self, link: _Link, exc: Exception | None) -> None:
        if link is not self.link:
            return  # a connection given up on, or replaced
        self.link = None
        self.cancel_timer()
        if not self.closing and link.ready.done() and link.ready.exception() is None:
            self.dropped_at = time.monotonic()
            self.drop_reason = type(exc).__name__ if exc else "closed by the broker"
            self.dropped.set()
            self.fleet.drops += 1

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # -- publishing ---------------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        if self.link is None:
            return
        pid = self.next_packet_id() if qos else 0
        if qos:
            self.inflight.add(pid)
        self.link.send(publish_packet(topic, payload, qos, pid))

    def publish_event(self, doc: dict[str, Any]) -> None:
        self.publish(self.topics["event"], json.dumps(doc, separators=(",", ":")).encode())
        self.fleet.events += 1

    def publish_telemetry(self) -> None:
        self.seq += 1
        uptime_ms = int((time.monotonic() - self.started) * 1000)
        doc = {
            "seq": self.seq,
            "uptime_ms": uptime_ms,
            "mem_free": self.fleet.mem_free,
            "fw": self.fleet.fw,
            "puf": self.fleet.puf,
        }
        if self.publish_log is not None:
            self.publish_log.append((self.seq, time.time()))
        self.publish(self.topics["telemetry"], json.dumps(doc, separators=(",", ":")).encode())
        self.fleet.published += 1

    def on_puback(self, packet_id: int) -> None:
        if packet_id in self.inflight:
            self.inflight.discard(packet_id)
            self.fleet.acked += 1

    # -- commands -----------------------------------------------------------------------------
    def on_command(self, payload: bytes) -> None:
        received = time.monotonic()
        v = check_command(payload, self.signer, self.device_id, self.cmd_seq, time.time())
        if v.body is None:
            self.commands.append(CommandRecord(v.seq, None, v.reason or "?", received, received))
            self.publish_event({"event": "command_rejected", "seq": v.seq, "reason": v.reason})
            return
        seq, kind = int(v.body["seq"]), str(v.body["kind"])
        self.cmd_seq = seq  # kept before acting: a command never runs twice
        record = CommandRecord(seq, kind, "accepted", received)
        self.commands.append(record)
        self.publish_event({"event": "command", "seq": seq, "status": "accepted"})
        if kind == "ping":
            self._answer(record, "done")
        elif kind == "renew":
            self.fleet.spawn(self._renew(record))
        else:
            self._answer(record, "failed", "unknown_kind")

    def _answer(self, record: CommandRecord, status: str, reason: str | None = None) -> None:
        doc: dict[str, Any] = {"event": "command", "seq": record.seq, "status": status}
        if reason is not None:
            doc["reason"] = reason
        self.publish_event(doc)
        record.status, record.answered_at = status, time.monotonic()

    async def _renew(self, record: CommandRecord) -> None:
        """Close the session, hello + proof, reconnect with the new certificate, report."""
        self.close()
        loop = asyncio.get_running_loop()
        failure: str | None = None
        try:
            answer = await loop.run_in_executor(None, self.sim.onboard)
        except OnboardFailed as e:  # hello refused: the server's error code
            failure = e.response.error or f"http_{e.response.status}"
        except (OSError, ValueError):  # no answer, or not one to read
            failure = "unreachable"
        else:
            if answer.status != 200:
                failure = answer.error or f"http_{answer.status}"
            elif answer.body.get("certificate_b64") == self.answer["certificate_b64"]:
                failure = "same_certificate"
            else:
                self.answer = answer.body
                self.signer = _signer_of(answer.body, self.spec.root_der)
                self.context = None
                self.renewals += 1
        try:
            await self.connect(self.fleet.timeout_s)
        except ConnectFailed as e:  # off until asked again; nothing can carry the answer
            record.status, record.answered_at = f"failed: reconnect {e.outcome}", None
            return
        if failure is None:
            self._answer(record, "done")
        else:
            self._answer(record, "failed", failure[:40])


def _signer_of(answer: dict[str, Any], root_der: bytes) -> ec.EllipticCurvePublicKey | None:
    raw = answer.get("command_signer_b64")
    return signer_key(base64.b64decode(raw), root_der) if isinstance(raw, str) else None


# -- the fleet --------------------------------------------------------------------------------
def raise_nofile() -> tuple[int, int]:
    """Lift this process's soft limit on open descriptors to its hard limit (one descriptor per
    connection); returns (soft, hard) as they are now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


@dataclass
class MqttFleet:
    """Devices of one process's event loop. Build it inside the loop that will run it."""

    specs: Sequence[DeviceSpec]
    workdir: Path
    keepalive_s: int = 60
    address: tuple[str, int] | None = None  # where to connect; default: each answer's broker
    timeout_s: float = 30.0
    fw: str = "sim-1.0.0"
    mem_free: int = 61_440
    puf: dict[str, int] = field(
        default_factory=lambda: {"margin": 40, "corrected_bits": 3, "health_failures": 0}
    )
    published: int = 0
    acked: int = 0
    events: int = 0
    drops: int = 0

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.nofile = raise_nofile()
        self.devices = {d.device_id: d for d in (FleetDevice(self, s) for s in self.specs)}
        self._interval: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._keepalive: asyncio.Task[None] | None = None

    # -- helpers of FleetDevice -----------------------------------------------------------------
    def context_for(self, dev: FleetDevice) -> ssl.SSLContext:
        """The device's TLS context: its certificate chain and key (one 0600 file, which
        `load_cert_chain` needs), the broker checked against the pinned root."""
        b = dev.answer
        ders = [base64.b64decode(b["certificate_b64"])]
        ders += [base64.b64decode(c) for c in b["chain_b64"]]
        pem = b"".join(
            x509.load_der_x509_certificate(d).public_bytes(serialization.Encoding.PEM) for d in ders
        )
        pem += dev.sim.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path = self.workdir / f"{dev.device_id}.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        ctx = root_context(base64.b64decode(b["broker"]["ca_b64"]))
        ctx.load_cert_chain(str(path))
        return ctx

    def address_for(self, dev: FleetDevice) -> tuple[str, int]:
        if self.address is not None:
            return self.address
        return str(dev.answer["broker"]["host"]), int(dev.answer["broker"]["port"])

    def on_online(self, dev: FleetDevice) -> None:
        if self._interval is not None:
            self._arm(dev, random.uniform(0, self._interval))

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _select(self, device_ids: Iterable[str] | None) -> list[FleetDevice]:
        if device_ids is None:
            return list(self.devices.values())
        return [self.devices[i] for i in device_ids]

    # -- what a caller asks -------------------------------------------------------------------
    def ids(self) -> list[str]:
        return list(self.devices)

    async def connect(
        self, device_ids: Sequence[str] | None = None, concurrency: int = 64
    ) -> dict[str, Any]:
        """Connect the devices (all by default) `concurrency` at a time; how many came online,
        the outcomes of those that did not, and the seconds it took."""
        if self._keepalive is None:
            self._keepalive = asyncio.get_running_loop().create_task(self._keep_alive())
        gate = asyncio.Semaphore(concurrency)
        outcomes: Counter[str] = Counter()
        started = time.monotonic()

        async def one(dev: FleetDevice) -> None:
            async with gate:
                try:
                    await dev.connect(self.timeout_s)
                except ConnectFailed as e:
                    outcomes[e.outcome] += 1
                else:
                    outcomes["online"] += 1

        await asyncio.gather(*(one(d) for d in self._select(device_ids)))
        return {
            "online": outcomes.pop("online", 0),
            "failed": dict(outcomes),
            "seconds": time.monotonic() - started,
        }

    async def try_connect(self, device_ids: Sequence[str]) -> dict[str, str]:
        """Each device's outcome of one connection attempt (`online` when the broker accepted
        it; the connection is then closed again)."""
        out = {}
        for dev in self._select(device_ids):
            try:
                await dev.connect(self.timeout_s)
            except ConnectFailed as e:
                out[dev.device_id] = e.outcome
            else:
                out[dev.device_id] = "online"
                dev.close()
        return out

    def start_telemetry(self, interval_s: float) -> None:
        """Every online device publishes telemetry every `interval_s`, the first at a random
        point of the first interval."""
        self._interval = interval_s
        for dev in self.devices.values():
            if dev.online and dev.timer is None:
                self._arm(dev, random.uniform(0, interval_s))

    def stop_telemetry(self) -> None:
        self._interval = None
        for dev in self.devices.values():
            dev.cancel_timer()

    def _arm(self, dev: FleetDevice, delay: float) -> None:
        dev.timer = asyncio.get_running_loop().call_later(delay, self._tick, dev)

    def _tick(self, dev: FleetDevice) -> None:
        dev.timer = None
        if self._interval is None or not dev.online:
            return
        dev.publish_telemetry()
        self._arm(dev, self._interval)

    async def _keep_alive(self) -> None:
        """3.1.2.10: a control packet within the keep-alive; PINGREQ when idle for half of it."""
        while True:
            await asyncio.sleep(self.keepalive_s / 4)
            idle_since = time.monotonic() - self.keepalive_s / 2
            for dev in self.devices.values():
                if dev.online and dev.last_sent < idle_since and dev.link is not None:
                    dev.link.send(PINGREQ)

    def sample(self, device_ids: Sequence[str]) -> None:
        """Keep the publish time (wall clock, as the server's `last_seen`) of every telemetry
        message of these devices."""
        for dev in self._select(device_ids):
            dev.publish_log = []

    def publish_log(self, device_ids: Sequence[str]) -> dict[str, list[tuple[int, float]]]:
        return {d.device_id: list(d.publish_log or []) for d in self._select(device_ids)}

    def seqs(self) -> dict[str, int]:
        """Each device's last telemetry sequence number."""
        return {i: d.seq for i, d in self.devices.items()}

    def stats(self) -> dict[str, Any]:
        online = sum(1 for d in self.devices.values() if d.online)
        return {
            "devices": len(self.devices),
            "online": online,
            "published": self.published,
            "acked": self.acked,
            "events": self.events,
            "drops": self.drops,
            "renewals": sum(d.renewals for d in self.devices.values()),
            "nofile": list(self.nofile),
        }

    def commands(self, device_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        return {d.device_id: [vars(c).copy() for c in d.commands] for d in self._select(device_ids)}

    async def wait_command(
        self, device_id: str, seq: int, status: str = "done", timeout_s: float = 10.0
    ) -> dict[str, Any] | None:
        """The device's record of command `seq` once it has `status`; None on timeout."""
        dev = self.devices[device_id]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for c in dev.commands:
                if c.seq == seq and c.status == status:
                    return vars(c).copy()
            await asyncio.sleep(0.005)
        return None

    async def wait_dropped(
        self, device_ids: Sequence[str], timeout_s: float
    ) -> dict[str, float | None]:
        """When each device's connection was dropped (CLOCK_MONOTONIC), None if it was not
        within `timeout_s`."""
        devs = self._select(device_ids)
        waits = [asyncio.ensure_future(d.dropped.wait()) for d in devs]
        _done, pending = await asyncio.wait(waits, timeout=timeout_s)
        for w in pending:
            w.cancel()
        return {d.device_id: d.dropped_at for d in devs}

    def dropped(self) -> dict[str, tuple[float, str]]:
        """Every device whose connection the broker dropped: (when, how)."""
        return {
            i: (d.dropped_at, d.drop_reason or "")
            for i, d in self.devices.items()
            if d.dropped_at is not None
        }

    async def close(self) -> None:
        self.stop_telemetry()
        if self._keepalive is not None:
            self._keepalive.cancel()
        for task in list(self._tasks):
            task.cancel()
        for dev in self.devices.values():
            dev.close()
        await asyncio.sleep(0.05)  # the DISCONNECTs leave before the loop ends


# -- a fleet in its own process ---------------------------------------------------------------
class FleetError(RuntimeError):
    """The fleet's process failed a call or ended; the message carries its exception."""


_CALLS = frozenset(
    {
        "ids",
        "connect",
        "try_connect",
        "start_telemetry",
        "stop_telemetry",
        "sample",
        "publish_log",
        "seqs",
        "stats",
        "commands",
        "wait_command",
        "wait_dropped",
        "dropped",
    }
)


def _fleet_main(conn: Connection, specs: list[DeviceSpec], kw: dict[str, Any]) -> None:
    asyncio.run(_serve(conn, specs, kw))


async def _serve(conn: Connection, specs: list[DeviceSpec], kw: dict[str, Any]) -> None:
    fleet = MqttFleet(specs, **kw)
    requests: asyncio.Queue[tuple[str, tuple[Any, ...], dict[str, Any]] | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            requests.put_nowait(conn.recv())
        except EOFError:  # the caller is gone
            loop.remove_reader(conn.fileno())
            requests.put_nowait(None)

    loop.add_reader(conn.fileno(), readable)
    conn.send(("ok", fleet.stats()))
    while (req := await requests.get()) is not None:
        name, args, kwargs = req
        if name == "close":
            break
        try:
            result = getattr(fleet, name)(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        except Exception as e:
            conn.send(("error", f"{name}: {type(e).__name__}: {e}"))
        else:
            conn.send(("ok", result))
    await fleet.close()
    with contextlib.suppress(OSError):
        conn.send(("ok", None))


class FleetProcess:
    """An `MqttFleet` in a process of its own (spawned: the devices cross as `DeviceSpec`s),
    driven with `call(method, ...)`; `pid` for its CPU and memory."""

    def __init__(self, specs: Sequence[DeviceSpec], workdir: Path, **fleet_kw: Any) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        kw = {"workdir": Path(workdir), **fleet_kw}
        self._proc = ctx.Process(target=_fleet_main, args=(child, list(specs), kw), daemon=True)
        self._child = child

    @property
    def pid(self) -> int:
        assert self._proc.pid is not None, "the fleet's process has not started"
        return self._proc.pid

    def start(self, timeout_s: float = 120.0) -> FleetProcess:
        self._proc.start()
        self._child.close()
        self.started_stats = self._receive("start", timeout_s)
        return self

    def call(self, name: str, *args: Any, timeout_s: float = 600.0, **kwargs: Any) -> Any:
        if name not in _CALLS:
            raise ValueError(f"a fleet has no call {name!r}; calls: {', '.join(sorted(_CALLS))}")
        self._conn.send((name, args, kwargs))
        return self._receive(name, timeout_s)

    def _receive(self, name: str, timeout_s: float) -> Any:
        try:
            if not self._conn.poll(timeout_s):
                raise FleetError(f"the fleet did not answer {name} within {timeout_s:.0f} s")
            status, value = self._conn.recv()
        except (EOFError, OSError):
            raise FleetError(
                f"the fleet's process ended during {name} (exit status {self._proc.exitcode})"
            ) from None
        if status != "ok":
            raise FleetError(str(value))
        return value

    def stop(self, timeout_s: float = 30.0) -> None:
        """Close every connection politely and end the process."""
        if self._proc.is_alive():
            with contextlib.suppress(OSError, FleetError):
                self._conn.send(("close", (), {}))
                self._receive("close", timeout_s)
            self._proc.join(timeout_s)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
        self._conn.close()

    def __enter__(self) -> FleetProcess:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
