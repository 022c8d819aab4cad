"""What the benchmarks of a fleet that stays online share (bench/fleet_online.py,
bench/revoke.py): a registered fleet onboarded by worker processes, processes' memory and CPU,
the server's admin view of its broker, and a bare Mosquitto with the same TLS listener.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pwd
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.onboarding import _broker_pid, _cpu_s, _descendants
from hil.mqttfleet import DeviceSpec
from hil.serverproc import ServerProcess
from hil.simdevice import SimDevice

TENANT = "bench"


def quantile(values: Sequence[float], q: int) -> float:
    """The q-th percentile (1..99) of `values`; the value itself for one."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return float(values[0])
    return statistics.quantiles(values, n=100)[q - 1]


def rss_kib(pid: int) -> int:
    """VmRSS of a process (kernel's /proc/<pid>/status, in KiB); 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def server_pids(proc: ServerProcess) -> list[int]:
    """The server's main process and its API workers, not the broker it started."""
    main = int(proc.info["pid"])
    broker = _broker_pid(proc.data_dir)
    return [p for p in [main, *_descendants(main)] if p != broker]


def server_rss_kib(proc: ServerProcess) -> int:
    return sum(rss_kib(p) for p in server_pids(proc))


def server_cpu_s(proc: ServerProcess) -> float:
    total = 0.0
    for p in server_pids(proc):
        with contextlib.suppress(OSError):
            total += _cpu_s(p)
    return total


def broker_pid(proc: ServerProcess) -> int:
    pid = _broker_pid(proc.data_dir)
    if pid is None:
        raise RuntimeError(f"no broker pid in {proc.data_dir}/broker/mosquitto.pid")
    return pid


def cpu_s(pid: int) -> float:
    try:
        return _cpu_s(pid)
    except OSError:
        return 0.0


def register(proc: ServerProcess, batches: dict[str, Sequence[SimDevice]]) -> None:
    """Tenant TENANT, and each batch with its devices, through the CLI."""
    proc.ensure_tenant(TENANT)
    for name, devices in batches.items():
        csv = proc.data_dir / f"{name}.csv"
        csv.write_text("\n".join(d.csv_line() for d in devices) + "\n")
        proc.cli("batch", "create", name, "--tenant", TENANT)
        proc.cli("batch", "import", name, str(csv), "--no-progress")


# -- onboarding by worker processes -----------------------------------------------------------
_Result = tuple[int, dict[str, Any] | None, float, str]  # index, answer body, seconds, error


def _onboard_one(device: SimDevice, i: int) -> _Result:
    t0 = time.perf_counter()
    try:
        r = device.onboard()
        body, err = (r.body, "") if r.status == 200 else (None, f"HTTP {r.status} {r.body}")
    except Exception as e:  # a failure is a result of the benchmark
        body, err = None, f"{type(e).__name__}: {e}"
    return i, body, time.perf_counter() - t0, err[:200]


def _onboard_worker(devices: Sequence[SimDevice], conn: Connection) -> None:
    """Onboard the devices the parent names, `threads` at a time, until it sends None."""
    while (job := conn.recv()) is not None:
        indices, threads = job
        with ThreadPoolExecutor(threads) as pool:
            conn.send(list(pool.map(lambda i: _onboard_one(devices[i], i), indices)))


class OnboardPool:
    """Processes that onboard devices of `devices` (hello + proof) when asked. Started (forked)
    before the benchmark opens any thread of its own, and given the devices then: their keys
    are never pickled, and a fork never copies another thread's held lock."""

    def __init__(self, devices: Sequence[SimDevice], processes: int = 4) -> None:
        ctx = multiprocessing.get_context("fork")
        self.devices = devices
        self.pipes: list[Connection] = []
        self.procs = []
        for _ in range(processes):
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=_onboard_worker, args=(devices, theirs), daemon=True)
            p.start()
            theirs.close()
            self.pipes.append(mine)
            self.procs.append(p)

    def onboard(
        self, indices: Sequence[int], concurrency: int
    ) -> tuple[dict[int, dict[str, Any]], list[float], list[str], float]:
        """Onboard devices[i] for i in `indices`, `concurrency` at a time in all: (answers by
        index, latencies of the successes, errors, wall seconds)."""
        n = len(self.pipes)
        started = time.perf_counter()
        for k, conn in enumerate(self.pipes):
            threads = max(1, concurrency // n + (1 if k < concurrency % n else 0))
            conn.send((list(indices[k::n]), threads))
        answers: dict[int, dict[str, Any]] = {}
        latencies: list[float] = []
        errors: list[str] = []
        for conn in self.pipes:
            for i, body, seconds, err in conn.recv():
                if body is None:
                    errors.append(err)
                else:
                    answers[i] = body
                    latencies.append(seconds)
        return answers, latencies, errors, time.perf_counter() - started

    def close(self) -> None:
        for conn in self.pipes:
            with contextlib.suppress(OSError):
                conn.send(None)
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.terminate()


def specs(
    devices: Sequence[SimDevice], answers: dict[int, dict[str, Any]], indices: Sequence[int]
) -> list[DeviceSpec]:
    return [DeviceSpec.of(devices[i], answers[i]) for i in indices if i in answers]


# -- the server's broker, as its admin sees it ------------------------------------------------
def admin_port(proc: ServerProcess) -> int:
    return int(proc.info["broker_admin_port"])


# -- a bare Mosquitto: the same TLS listener, no plugin, no rules -----------------------------
class BareBroker:
    """Mosquitto with the managed broker's device listener (its certificate, the CA bundle,
    client certificates required, the CRL, the certificate's CN as user name) and nothing
    else: no plugin, no ACL, no server behind it. Holding connections on it is the floor of
    what holding them on the managed broker costs."""

    def __init__(self, data_dir: Path, workdir: Path) -> None:
        from host.server.broker import MOSQUITTO, free_port
        from host.server.ca import CertificateAuthority

        ca = CertificateAuthority.load(data_dir / "ca")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port("127.0.0.1")
        self.log = self.dir / "mosquitto.log"
        conf = self.dir / "mosquitto.conf"
        lines = [
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "connection_messages false",
            "allow_anonymous false",
            f"listener {self.port} 127.0.0.1",
            f"cafile {ca.bundle_path}",
            f"certfile {ca.cert_path('broker')}",
            f"keyfile {ca.key_path('broker')}",
            "require_certificate true",
            f"crlfile {ca.crl_pem_path}",
            "use_identity_as_username true",
            "use_username_as_clientid true",
            "set_tcp_nodelay true",
        ]
        conf.write_text("\n".join(lines) + "\n")
        conf.chmod(0o600)
        self._args = [MOSQUITTO, "-c", str(conf)]
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self, timeout_s: float = 10.0) -> BareBroker:
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                self._args, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"bare mosquitto exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"bare mosquitto did not listen within {timeout_s:.0f} s")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> BareBroker:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


# -- the floors through the server's own broker -----------------------------------------------
def _admin_client(data_dir: Path, port: int, name: str, on_connected: Any, on_message: Any) -> Any:
    """A client on the broker's admin listener with the server's admin certificate (the way
    the server's own telemetry and event intakes connect: host/server/mqtt.py)."""
    from host.server.broker import ADMIN_HOST
    from host.server.ca import CertificateAuthority
    from host.server.mqtt import connect_admin

    ca = CertificateAuthority.load(data_dir / "ca")

    def configure(client: Any) -> None:
        client.on_message = on_message

    def connected(client: Any) -> None:
        # paho leaves Nagle's algorithm on: a publish that follows the PUBACK of a received
        # message would wait for the broker's delayed ACK of it (40 ms on Linux).
        client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        on_connected(client)

    return connect_admin(
        ca,
        ADMIN_HOST,
        port,
        f"{name}-{os.getpid()}",
        on_connected=connected,
        configure=configure,
    )


def _floor_subscriber(data_dir: str, port: int, sampled: list[str], conn: Connection) -> None:
    """Receives every device's telemetry as the server's intake does (paho, QoS 0, the admin
    listener) and does nothing with it but count; for sampled devices it keeps (device, seq,
    arrival wall time). Between the parent's "start" and "stop": (messages, CPU seconds of this
    whole process, the sampled arrivals)."""
    import json

    keep = set(sampled)
    count = [0]
    arrivals: list[tuple[str, int, float]] = []
    subscribed = threading.Event()

    def on_connected(client: Any) -> None:
        client.on_subscribe = lambda *_a: subscribed.set()
        client.subscribe("qlink/+/+/telemetry", qos=0)

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        count[0] += 1
        device = msg.topic.split("/")[2]
        if device in keep:
            arrivals.append((device, int(json.loads(msg.payload)["seq"]), time.time()))

    client = _admin_client(Path(data_dir), port, "bench-floor", on_connected, on_message)
    subscribed.wait(10)
    conn.send("ready")
    conn.recv()
    n0, cpu0, at = count[0], time.process_time(), len(arrivals)
    conn.recv()
    conn.send((count[0] - n0, time.process_time() - cpu0, arrivals[at:]))
    client.loop_stop()
    client.disconnect()


class FloorSubscriber:
    """`_floor_subscriber` in a process of its own (spawned: no thread of the benchmark's is
    copied), so its CPU is its own."""

    def __init__(self, data_dir: Path, port: int, sampled: Sequence[str]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, theirs = ctx.Pipe()
        self.proc = ctx.Process(
            target=_floor_subscriber,
            args=(str(data_dir), port, list(sampled), theirs),
            daemon=True,
        )
        self.proc.start()
        theirs.close()
        if not self.conn.poll(60) or self.conn.recv() != "ready":
            self.close()
            raise RuntimeError("the floor subscriber did not start")

    def start(self) -> None:
        self.conn.send("start")

    def stop(self) -> tuple[int, float, list[tuple[str, int, float]]]:
        self.conn.send("stop")
        result: tuple[int, float, list[tuple[str, int, float]]] = self.conn.recv()
        return result

    def close(self) -> None:
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


class AdminRoundTrip:
    """A command's transport floor: a `ping` signed beforehand with the server's command key,
    published by an admin client straight to the device's `cmd` topic, and the device's `done`
    read back by the same client from its `event` topic. The device checks and answers it as
    it does any command; no store, no audit, no event intake, no signing on the clock."""

    def __init__(self, data_dir: Path, port: int) -> None:
        import json

        from host.server.ca import CertificateAuthority
        from host.server.commands import CommandSigner

        self.signer = CommandSigner.load_or_create(CertificateAuthority.load(data_dir / "ca"))
        self._waiting: dict[tuple[str, int], threading.Event] = {}
        self._arrived: dict[tuple[str, int], float] = {}
        subscribed = threading.Event()

        def on_connected(client: Any) -> None:
            client.on_subscribe = lambda *_a: subscribed.set()
            client.subscribe(f"qlink/{TENANT}/+/event", qos=1)

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            doc = json.loads(msg.payload)
            if doc.get("event") != "command" or doc.get("status") != "done":
                return
            key = (msg.topic.split("/")[2], int(doc["seq"]))
            if key in self._waiting:
                self._arrived[key] = time.monotonic()
                self._waiting[key].set()

        self.client = _admin_client(data_dir, port, "bench-roundtrip", on_connected, on_message)
        if not subscribed.wait(10):
            raise RuntimeError("the broker did not confirm the round trip's subscription")

    def ping(self, device_id: str, seq: int, timeout_s: float = 5.0) -> float:
        """Seconds from the publish to the device's `done`."""
        from host.server.commands import body

        payload = self.signer.sign(body(device_id, seq, int(time.time()) + 600, "ping", {}))
        key = (device_id, seq)
        self._waiting[key] = done = threading.Event()
        t0 = time.monotonic()
        self.client.publish(f"qlink/{TENANT}/{device_id}/cmd", payload, qos=1)
        if not done.wait(timeout_s):
            raise TimeoutError(f"no done from {device_id[:12]} within {timeout_s} s")
        return self._arrived.pop(key) - t0

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
