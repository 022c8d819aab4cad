"""Onboarding at scale: N simulated devices (CPython, real keys, real TLS, the real protocol)
onboard concurrently against the real server + broker. In the same run:
- the ceiling: one onboarding's crypto (TLS handshake, proof and CSR verification, certificate
  signing), its CPU on one core and its rate measured with every core doing only that;
- the floor: devices of the same kind against a server that does only TLS, TCP, HTTP framing
  and that crypto (bench/_floor.py), the most any server can reach with these devices on these
  cores;
- the floor with the store, and the floor with the logic: the same stand-in making the store's
  part of each onboarding (`_StoreWork`), and answering with the server's own device logic
  (`_AppWork`: everything but the HTTP framework); the steps between them and the real server
  are what the store, the logic and the framework each cost.
  Every server is up together and the fleet onboards in waves alternating with the floors',
  each side first in turn, so that every rate sees the same drift of the machine's speed.
  Every side's waves hold as many devices (each floor's fleet is as large as the real one): a
  wave's last answers leave cores idle for about one answer's time, the same share of a wave of
  the same size at any speed. A wave's time starts once its device processes are up, and each
  side first onboards a warm-up of its own that is not counted.

Environment: QLINK_BENCH_DEVICES (default 10000: the fleet whose wall time is reported),
QLINK_BENCH_FLOOR_DEVICES (default: as many), QLINK_BENCH_CONCURRENCY (default 32),
QLINK_BENCH_WORKERS (default: one API worker per core, the
configuration docs/operator.md gives for throughput) on the embedded SQLite registry.
The figures also hold a cProfile of the onboarding logic in-process (notes: top entries).
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import resource
import secrets
import ssl
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bench._floor import HELLO_PATH, FloorServer, Work, canned_answers, proof_work
from hil.serverproc import ServerProcess
from hil.simdevice import OnboardFailed, SimDevice, make_csr
from host.server.store import Actor


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
        for k in kids:
            found += [k, *_descendants(k)]
    return found


def _server_cpu_s(pid: int, broker: int | None) -> float:
    """The server's main process and its uvicorn workers, not the broker it also started."""
    total = 0.0
    for p in [pid, *_descendants(pid)]:
        if p != broker:
            try:
                total += _cpu_s(p)
            except OSError:
                pass
    return total


def _broker_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "broker" / "mosquitto.pid").read_text())
    except (OSError, ValueError):
        return None


class _Crypto:
    """One onboarding's crypto on this machine: a TLS 1.3 handshake with the server's P-256
    certificate (both ends, in memory), the proof's ECDSA verify, the CSR's verify and the
    certificate's signature. The device's own signing is done once, outside the rounds."""

    def __init__(self, data_dir: Path) -> None:
        from host.server.ca import CertificateAuthority

        self.ca = CertificateAuthority.load(data_dir / "ca")
        self.sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.sctx.load_cert_chain(str(self.ca.cert_path("server")), str(self.ca.key_path("server")))
        self.cctx = ssl.create_default_context(cafile=str(self.ca.root_pem_path))
        key = ec.generate_private_key(ec.SECP256R1())
        self.public_key = key.public_key()
        self.csr_der = make_csr(key, "x" * 64)
        self.msg = os.urandom(120)
        self.sig = key.sign(self.msg, ec.ECDSA(hashes.SHA256()))

    def round(self) -> None:
        self.handshake()
        self.server_checks()

    def server_checks(self) -> x509.Certificate:
        """The crypto of the server's proof checks: what no server can skip."""
        self.public_key.verify(self.sig, self.msg, ec.ECDSA(hashes.SHA256()))
        csr = x509.load_der_x509_csr(self.csr_der)
        assert csr.is_signature_valid
        return self.ca.issue_device(csr, "x" * 64, 365)

    def handshake(self) -> None:
        s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
        server = self.sctx.wrap_bio(s_in, s_out, server_side=True)
        client = self.cctx.wrap_bio(c_in, c_out, server_hostname="localhost")
        for _ in range(10):
            for side in (client, server):
                try:
                    side.do_handshake()
                except ssl.SSLWantReadError:
                    pass
            s_in.write(c_out.read())
            c_in.write(s_out.read())
            if client.version() and server.version():
                try:
                    client.do_handshake()
                    server.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    continue


def ceiling(data_dir: Path, rounds: int = 300) -> float:
    """CPU seconds of one onboarding's crypto (`_Crypto`) on one core."""
    crypto = _Crypto(data_dir)
    start = time.process_time()
    for _ in range(rounds):
        crypto.round()
    return (time.process_time() - start) / rounds


def _crypto_for(data_dir: Path, seconds: float, go: Event, out: Connection) -> None:
    crypto = _Crypto(data_dir)
    crypto.round()
    go.wait()
    done, start = 0, time.perf_counter()
    while (spent := time.perf_counter() - start) < seconds:
        crypto.round()
        done += 1
    out.send(done / spent)
    out.close()


def ceiling_rate(data_dir: Path, processes: int, seconds: float = 3.0) -> float:
    """Onboardings' crypto per second with every core doing nothing else (one process per
    core, all at once): measured, as cores rarely scale linearly on a shared host."""
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()
    procs, pipes = [], []
    for _ in range(processes):
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_crypto_for, args=(data_dir, seconds, go, send))
        p.start()
        send.close()
        procs.append(p)
        pipes.append(recv)
    time.sleep(0.5)  # every process has built its contexts
    go.set()
    rate = sum(recv.recv() for recv in pipes)
    for p in procs:
        p.join()
    return float(rate)


def profile_app(n: int = 200, top: int = 8) -> tuple[float, list[str]]:
    """cProfile of the server's onboarding logic in-process (store, CA, checks; no HTTP, TLS
    or broker): ms per onboarding and the top entries by own time."""
    import cProfile
    import pstats

    from hil.simdevice import ApiResponse
    from host.server.application import Application
    from host.server.policy import MemoryPolicy
    from host.server.settings import Settings

    with tempfile.TemporaryDirectory(prefix="qlink-prof-") as tmp:
        settings = Settings(data_dir=Path(tmp))
        reg = Application.for_server(settings, broker_port=1, policy=MemoryPolicy())
        svc = reg.onboarding
        reg.create_batch("p")
        devs = [SimDevice("https://localhost", b"") for _ in range(n)]
        reg.import_devices("p", [d.csv_line() for d in devs])
        prof = cProfile.Profile()
        spent = 0.0
        for d in devs:
            t = time.perf_counter()
            prof.enable()
            h = svc.hello({"device_id": d.device_id, "public_key": d.public_key.hex()})
            prof.disable()
            spent += time.perf_counter() - t
            body = d.proof_body(ApiResponse(200, h))  # the device's signing: not the server's
            t = time.perf_counter()
            prof.enable()
            svc.proof(body)
            prof.disable()
            spent += time.perf_counter() - t
        reg.close()
    stats = pstats.Stats(prof)
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]  # type: ignore[attr-defined]
    lines = [
        f"{tt / n * 1000:.3f} ms own, {ct / n * 1000:.3f} ms cum per onboarding: "
        f"{Path(file).name}:{line}({name})"
        for (file, line, name), (_cc, _nc, tt, ct, _callers) in rows
    ]
    return spent / n * 1000, lines


_DEVICE_PROCESSES = 4  # the simulated fleet's processes: threads of one would queue on its GIL
_START_S = 120.0  # s; the longest a wave waits for its device processes to be up


def _onboard_slice(devices: list[SimDevice], threads: int, start: Barrier, out: Connection) -> None:
    """In a device process: once every process is up (`start`), onboard `devices` with
    `threads` at a time; send back (latencies, errors)."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one(d: SimDevice) -> None:
        t0 = time.perf_counter()
        try:
            r = d.onboard()
            ok = r.status == 200
        except Exception as e:
            ok, r = False, e  # type: ignore[assignment]
        dt_s = time.perf_counter() - t0
        with lock:
            (latencies.append(dt_s) if ok else errors.append(str(r)[:200]))

    with ThreadPoolExecutor(threads) as pool:
        start.wait(_START_S)
        list(pool.map(one, devices))
    out.send((latencies, errors))
    out.close()


def _onboard_all(
    devices: list[SimDevice], concurrency: int
) -> tuple[list[float], list[str], float]:
    """Onboard the fleet from several forked processes, `concurrency` devices at a time in all
    (the devices' keys were made before the fork: nothing is pickled): (latencies, errors, and
    the wall time from the moment every process was up to the last answer; the forks of a
    large parent are not the server's time)."""
    ctx = multiprocessing.get_context("fork")
    n = min(_DEVICE_PROCESSES, concurrency, len(devices))
    start = ctx.Barrier(n + 1)
    procs, pipes = [], []
    for i in range(n):
        recv, send = ctx.Pipe(duplex=False)
        threads = concurrency // n + (1 if i < concurrency % n else 0)
        p = ctx.Process(target=_onboard_slice, args=(devices[i::n], threads, start, send))
        p.start()
        send.close()
        procs.append(p)
        pipes.append(recv)
    start.wait(_START_S)  # a device process that died before it: BrokenBarrierError, not a hang
    wall0 = time.perf_counter()
    latencies: list[float] = []
    errors: list[str] = []
    for recv in pipes:
        lat, err = recv.recv()
        latencies += lat
        errors += err
    wall = time.perf_counter() - wall0
    for p in procs:
        p.join()
    return latencies, errors, wall


_ROUNDS = 5  # waves per side, alternating (see the module's docstring)
_WARM_UP = 500  # devices per side onboarded before the waves, not counted


def warm_up(devices: list[SimDevice], concurrency: int) -> None:
    """Onboard `devices` and forget the figures: the first wave after the set-up (key making,
    the import) ran up to a third slower, on whichever side went first."""
    _latencies, errors, _wall = _onboard_all(devices, concurrency)
    if errors:
        raise RuntimeError(f"the warm-up failed: {errors[:3]}")


_SOLO = 50  # devices onboarded one at a time, before the fleet: the latency of a quiet server


def _one_at_a_time(devices: list[SimDevice]) -> list[float]:
    """Each device's onboarding time (ms) with nothing else going on."""
    times = []
    for d in devices:
        t0 = time.perf_counter()
        r = d.onboard()
        if r.status != 200:
            raise RuntimeError(f"onboarding of a quiet server failed: {r}")
        times.append((time.perf_counter() - t0) * 1000)
    return times


def _real_answers(device: SimDevice) -> dict[bytes, bytes]:
    """One honest onboarding; the server's two answers, for the floor to replay."""
    with device.connection() as conn:
        hello = device.hello(conn=conn)
        if hello.status != 200:
            raise OnboardFailed(hello)
        proof = device.proof(device.proof_body(hello), conn)
    if proof.status != 200:
        raise OnboardFailed(proof)
    return canned_answers(hello.body, proof.body)


@dataclass
class Waves:
    """One side's waves of a fleet (the real server's or the floor's), summed."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    server_cpu_s: float = 0.0
    devices_cpu_s: float = 0.0
    wave_rates: list[float] = field(default_factory=list)  # onboardings/s of each wave, in order

    def add(
        self, devices: list[SimDevice], concurrency: int, server_cpu: Callable[[], float]
    ) -> None:
        """Onboard `devices` as one wave; its wall time and CPU (the server's, by
        `server_cpu`, and the device processes') go into the sums."""
        cpu0, ccpu0 = server_cpu(), _children_cpu_s()
        latencies, errors, wall = _onboard_all(devices, concurrency)
        self.wall_s += wall
        self.wave_rates.append(len(latencies) / wall)
        self.devices_cpu_s += _children_cpu_s() - ccpu0
        self.server_cpu_s += server_cpu() - cpu0
        self.latencies += latencies
        self.errors += errors

    @property
    def per_s(self) -> float:
        return len(self.latencies) / self.wall_s

    def ms_each(self, seconds: float) -> float:
        return seconds / max(len(self.latencies), 1) * 1000


def round_shares_pct(side: Waves, floor: Waves) -> list[float]:
    """`side`'s rate as a share of `floor`'s in each round, the two sides' waves of that round
    side by side (`interleaved`): how far the share moves within one run."""
    return [100 * a / b for a, b in zip(side.wave_rates, floor.wave_rates, strict=True)]


def reached(side: Waves, floor: Waves) -> dict[str, float]:
    """`side`'s rate as a share of `floor`'s (%) over the run, and the least and the most of it
    round by round (`round_shares_pct`)."""
    rounds = round_shares_pct(side, floor)
    return {
        "reached_pct": round(100 * side.per_s / floor.per_s, 1),
        "reached_pct_low": round(min(rounds), 1),
        "reached_pct_high": round(max(rounds), 1),
    }


_GOAL_SHARE = 0.8  # of the floor's rate: the server's goal (docs/operator.md)


def server_cpu_budget_ms(floor: Waves, share: float) -> float:
    """The most server CPU per onboarding (ms) with which a server can reach `share` of the
    floor's rate, and only at best: its devices spending no more than the floor's and the cores
    kept as busy as the floor keeps them. Bound by CPU, a rate is busy cores over the CPU of
    one onboarding (server's and devices'), so the budget is the floor's CPU per onboarding over
    `share`, less the devices' part of it."""
    server, devices = floor.ms_each(floor.server_cpu_s), floor.ms_each(floor.devices_cpu_s)
    return (server + devices) / share - devices


class _StoreWork:
    """The floor's work plus the store's part of an onboarding, made as the real server makes
    it (host/server/onboarding.py, the same store methods on a SQLite registry of its own): at
    hello the device's row (is it registered?), answered with a challenge made as the server
    makes it (host/server/challenge.py: nothing is written); at proof the device's row, then
    the used challenge and the certificate recorded on that row and the audit event written
    (one transaction). Bodies are parsed with json; no rule is checked, no signature of the
    device's verified but the floor's own, nothing logged."""

    def __init__(self, crypto: _Crypto, registry: Path) -> None:
        from host.server.challenge import Challenges
        from host.server.settings import Settings
        from host.server.store import Store

        self.crypto = crypto
        self.store = Store(registry, migrate=False)
        # The server's defaults, from the one place that holds them.
        self.settings = Settings(data_dir=registry.parent)
        self.challenges = Challenges(secrets.token_bytes(32))
        # The server finds a proof's device from its CSR; the floor does not parse the CSR.
        self.given: dict[str, str] = {}

    def __call__(self, path: bytes, body: bytes) -> bytes | None:
        msg = json.loads(body)
        now = time.time()
        if path == HELLO_PATH:
            dev = self.store.devices.get(msg["device_id"])
            if dev is None:
                raise RuntimeError(f"device {msg['device_id']} is not in the floor's registry")
            expires_ms = math.ceil((now + self.settings.challenge_ttl_s) * 1000)
            cid, challenge = self.challenges.issue(dev.device_id, expires_ms)
            self.given[cid] = dev.device_id
            expires = math.ceil(expires_ms / 1000)
            answer = {"challenge_id": cid, "challenge": challenge.hex(), "expires": expires}
            return json.dumps(answer).encode()
        cid = msg["challenge_id"]
        device_id = self.given.pop(cid, None)
        opened = None if device_id is None else self.challenges.open(cid, device_id)
        dev = None if device_id is None else self.store.devices.get(device_id)
        if opened is None or dev is None:
            raise RuntimeError("a proof for a challenge the floor did not give")
        cert = self.crypto.server_checks()
        self.store.challenges.complete(
            opened.order,
            dev,
            cert.public_bytes(serialization.Encoding.DER),
            cert.serial_number,
            cert.not_valid_after_utc.timestamp(),
            now,
            proof_hash=hashlib.sha256(body).hexdigest(),
            actor=Actor(f"device:{dev.device_id}", "127.0.0.1"),
        )
        return None


@dataclass(frozen=True)
class Broker:
    """The real server's broker, which the server's own logic in a floor answers with and
    whose policy driver it opens (bench/onboarding.py `_AppWork`)."""

    port: int
    admin_port: int


class _AppWork:
    """The floor's TLS, framing and answer, with the server's own device logic behind it: each
    request goes to host/server/deviceapi.py `answer` (JSON, the rules, the CA, the store, the
    policy driver's onboarding check, one log line) of an application built as an API worker
    builds it, on the registry of a data directory of its own with the real server's CA. What
    it lacks of the real server is the HTTP framework (uvicorn, the ASGI app) and its body
    reading; the difference between the two is that framework's cost."""

    def __init__(self, registry: Path, broker: Broker) -> None:
        import logging

        from host.server.application import Application
        from host.server.settings import Settings

        # The server's log lines, written and flushed as its stderr handler does (the file
        # stays open for the process's life).
        handler = logging.StreamHandler((registry.parent / "floor-app.log").open("a"))
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.INFO)
        settings = Settings(data_dir=registry.parent)
        self.app = Application.for_server(
            settings, broker_port=broker.port, admin_port=broker.admin_port
        )

    def __call__(self, path: bytes, body: bytes) -> bytes | None:
        from host.server.deviceapi import answer

        route = "hello" if path == HELLO_PATH else "proof"
        step = answer(self.app, route, body, "127.0.0.1")
        try:
            step.send(None)  # runs to its end unless a broker call must go to a thread
        except StopIteration as done:
            status, result, _extra = done.value
        else:
            step.close()
            raise RuntimeError("a device the broker must hear of: not a fresh fleet")
        if status != 200:
            raise RuntimeError(f"the server's logic refused a device: {status} {result}")
        return json.dumps(result).encode()


def floor_registry(data_dir: Path) -> Path:
    """A registry for the floor with the store (`_StoreWork`): the database of a data
    directory of its own with an empty batch "floor"; `register` fills it."""
    from host.server.application import Application
    from host.server.settings import Settings

    settings = Settings(data_dir=data_dir)
    app = Application.for_operator(settings)
    try:
        app.create_batch("floor")
    finally:
        app.close()
    assert isinstance(settings.database, Path)  # a data directory's SQLite file
    return settings.database


def register(registry: Path, devices: list[SimDevice]) -> None:
    """Import `devices` into the floor's registry, as `qlink batch import` would."""
    from host.server.store import Store

    store = Store(registry, migrate=False)
    try:
        store.batches.import_devices("floor", [d.csv_line() for d in devices])
    finally:
        store.close()


def start_floor(
    data_dir: Path,
    answers: dict[bytes, bytes],
    workers: int,
    registry: Path | None = None,
    broker: Broker | None = None,
) -> FloorServer:
    """The stand-in server (bench/_floor.py) with the real server's certificate and crypto;
    with `registry` (`floor_registry`), the store's part of each onboarding too (`_StoreWork`);
    with `broker` as well, the server's whole device logic (`_AppWork`, the real server's CA
    copied into the registry's data directory)."""
    import shutil

    from host.server.ca import CertificateAuthority

    ca = CertificateAuthority.load(data_dir / "ca")
    if registry is not None and broker is not None:
        shutil.copytree(data_dir / "ca", registry.parent / "ca", dirs_exist_ok=True)

    def context() -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # as uvicorn builds it
        ctx.load_cert_chain(ca.cert_path("server"), ca.key_path("server"))
        return ctx

    def work() -> Work:
        if registry is not None and broker is not None:
            return _AppWork(registry, broker)
        crypto = _Crypto(data_dir)
        if registry is None:
            return proof_work(crypto.server_checks)
        return _StoreWork(crypto, registry)

    return FloorServer(context, answers, work, workers).start()


def _waves(items: list[SimDevice], rounds: int) -> list[list[SimDevice]]:
    return [items[i::rounds] for i in range(rounds)]


def pids_cpu_s(pids: list[int]) -> float:
    """CPU seconds of these processes so far."""
    return sum(map(_cpu_s, pids))


def interleaved(
    sides: list[tuple[list[SimDevice], Callable[[], float]]], rounds: int, concurrency: int
) -> list[Waves]:
    """Each side's devices (with its server's CPU clock) onboarded in `rounds` waves, one side
    after the other in each round and the side that goes first rotating, so that every side
    sees the same drift of the machine's speed; the sums per side, in `sides`' order."""
    split = [(_waves(devices, rounds), cpu, Waves()) for devices, cpu in sides]
    for i in range(rounds):
        for waves, cpu, side in split[i % len(split) :] + split[: i % len(split)]:
            side.add(waves[i], concurrency, cpu)
    return [side for _waves_, _cpu, side in split]


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run() -> dict:
    n = int(os.environ.get("QLINK_BENCH_DEVICES", "10000"))
    concurrency = int(os.environ.get("QLINK_BENCH_CONCURRENCY", "32"))
    cores = os.cpu_count() or 1
    workers = int(os.environ.get("QLINK_BENCH_WORKERS", str(cores)))
    floor_n = int(os.environ.get("QLINK_BENCH_FLOOR_DEVICES", str(n)))
    with tempfile.TemporaryDirectory(prefix="qlink-bench-") as tmp:
        data = Path(tmp)
        proc = ServerProcess(data, extra_args=["--workers", str(workers)]).start()
        try:
            root = proc.root_der()
            devices = [SimDevice(proc.api_url, root, timeout_s=60) for _ in range(n + _WARM_UP)]
            solo = [SimDevice(proc.api_url, root) for _ in range(_SOLO + 1)]
            csv = data / "fleet.csv"
            csv.write_text("\n".join(d.csv_line() for d in devices + solo) + "\n")
            t = time.perf_counter()
            proc.cli("batch", "create", "bench")
            proc.cli("batch", "import", "bench", str(csv), "--no-progress")
            import_s = time.perf_counter() - t
            pid = int(proc.info["pid"])
            bpid = _broker_pid(data)
            answers = _real_answers(solo.pop())
            solo_ms = _one_at_a_time(solo)
            floor_server = start_floor(data, answers, workers)
            registry = floor_registry(data / "floor-store")
            store_server = start_floor(data, answers, workers, registry)
            app_registry = floor_registry(data / "floor-app")
            broker = Broker(int(proc.info["broker_port"]), int(proc.info["broker_admin_port"]))
            app_server = start_floor(data, answers, workers, app_registry, broker)
            try:
                floor_url = f"https://localhost:{floor_server.port}"
                floor_devices = [
                    SimDevice(floor_url, root, timeout_s=60) for _ in range(floor_n + _WARM_UP)
                ]
                store_url = f"https://localhost:{store_server.port}"
                store_devices = [
                    SimDevice(store_url, root, timeout_s=60) for _ in range(floor_n + _WARM_UP)
                ]
                register(registry, store_devices)
                app_url = f"https://localhost:{app_server.port}"
                app_devices = [
                    SimDevice(app_url, root, timeout_s=60) for _ in range(floor_n + _WARM_UP)
                ]
                register(app_registry, app_devices)
                warm_up(devices[n:], concurrency)
                warm_up(floor_devices[floor_n:], concurrency)
                warm_up(store_devices[floor_n:], concurrency)
                warm_up(app_devices[floor_n:], concurrency)
                devices = devices[:n]
                floor_devices, store_devices = floor_devices[:floor_n], store_devices[:floor_n]
                app_devices = app_devices[:floor_n]
                # The ceiling before and after the fleet: the machine's speed drifts.
                ceil_before, ceil_rate_before = ceiling(data), ceiling_rate(data, cores)
                bcpu0 = _cpu_s(bpid) if bpid else 0.0
                real, low, stored, logic = interleaved(
                    [
                        (devices, partial(_server_cpu_s, pid, bpid)),
                        (floor_devices, partial(pids_cpu_s, floor_server.pids())),
                        (store_devices, partial(pids_cpu_s, store_server.pids())),
                        (app_devices, partial(pids_cpu_s, app_server.pids())),
                    ],
                    _ROUNDS,
                    concurrency,
                )
                bcpu = (_cpu_s(bpid) if bpid else 0.0) - bcpu0
                ceil_after, ceil_rate_after = ceiling(data), ceiling_rate(data, cores)
            finally:
                floor_server.stop()
                store_server.stop()
                app_server.stop()
            ceil_s = (ceil_before + ceil_after) / 2
            ceil_rate = (ceil_rate_before + ceil_rate_after) / 2
        finally:
            proc.stop()
    for side, name in (
        (low, "the floor's"),
        (stored, "the floor with the store's"),
        (logic, "the floor with the server's logic's"),
    ):
        if side.errors:
            raise RuntimeError(f"{name} fleet failed: {side.errors[:3]}")
    app_ms, profile = profile_app()
    latencies, errors = real.latencies, real.errors
    ok = len(latencies)
    q = statistics.quantiles(latencies, n=100) if ok > 1 else [0.0] * 99
    rate = real.per_s
    floor_rate = low.per_s

    def cpu_ms(side: Waves) -> float:
        return side.ms_each(side.server_cpu_s)

    budget_ms = server_cpu_budget_ms(low, _GOAL_SHARE)

    def beside(side: Waves) -> dict[str, float]:
        """A floor's rate and CPU, its rate's share of the floor's, the real server's of its."""
        return {
            "per_s": round(side.per_s, 1),
            "server_cpu_ms": round(cpu_ms(side), 2),
            "devices_cpu_ms": round(side.ms_each(side.devices_cpu_s), 2),
            "floor_pct": round(100 * side.per_s / floor_rate, 1),
            "reached_pct": round(100 * rate / side.per_s, 1),
            "over_budget_ms": round(cpu_ms(side) - budget_ms, 2),
        }

    return {
        "figures": {
            "onboarding": {
                "per_s": round(rate, 1),
                "per_min": round(rate * 60),
                "p50_ms": round(q[49] * 1000, 1),
                "p95_ms": round(q[94] * 1000, 1),
                "p99_ms": round(q[98] * 1000, 1),
                "server_cpu_ms": round(real.ms_each(real.server_cpu_s), 2),
                "broker_cpu_ms": round(real.ms_each(bcpu), 2),
                "devices_cpu_ms": round(real.ms_each(real.devices_cpu_s), 2),
                "over_budget_ms": round(cpu_ms(real) - budget_ms, 2),
            },
            "one_device": {"p50_ms": round(statistics.median(solo_ms), 1)},
            "ceiling": {
                "cpu_ms": round(ceil_s * 1000, 2),
                "cpu_ms_before": round(ceil_before * 1000, 2),
                "cpu_ms_after": round(ceil_after * 1000, 2),
                "per_s": round(ceil_rate, 1),
                "per_s_before": round(ceil_rate_before, 1),
                "per_s_after": round(ceil_rate_after, 1),
                "per_s_if_linear": round(cores / ceil_s, 1),
                "ratio_pct": round(100 * rate / ceil_rate, 1),
            },
            "floor": {
                "per_s": round(floor_rate, 1),
                "server_cpu_ms": round(low.ms_each(low.server_cpu_s), 2),
                "devices_cpu_ms": round(low.ms_each(low.devices_cpu_s), 2),
                "ratio_pct": round(100 * floor_rate / ceil_rate, 1),
                **reached(real, low),
                "server_cpu_budget_ms": round(budget_ms, 2),
            },
            # What the store's part adds to the floor, and what the real server spends beyond
            # the floor with the store (rules, JSON, logs, framework) ...
            "floor_store": {
                **beside(stored),
                "store_cpu_ms": round(cpu_ms(stored) - cpu_ms(low), 2),
                "rest_cpu_ms": round(cpu_ms(real) - cpu_ms(stored), 2),
            },
            # ... that rest split: what the server's device logic adds to the store's part
            # (its rules, JSON, CA, logging), and what the HTTP framework adds to that logic.
            "floor_app": {
                **beside(logic),
                "logic_cpu_ms": round(cpu_ms(logic) - cpu_ms(stored), 2),
                "framework_cpu_ms": round(cpu_ms(real) - cpu_ms(logic), 2),
            },
            "app_profiled": {"ms": round(app_ms, 2)},
            "fleet": {
                "devices": n,
                "ok": ok,
                "failed": len(errors),
                "wall_s": round(real.wall_s, 2),
                "import_s": round(import_s, 2),
            },
        },
        "notes": [
            f"{n} devices, {concurrency} concurrent, {cores} cores shared by server ({workers} "
            "API workers, SQLite), broker and the simulated devices (their TLS and signing cost "
            "is on the same cores)",
            "server_cpu_ms, broker_cpu_ms: CPU time of the server (main process and workers) and "
            "of Mosquitto during the run / onboardings",
            f"floor: {floor_n} devices against a server that does only TLS, TCP, HTTP framing and "
            "the proof's crypto (verify, CSR verify, certificate signing), same certificate, same "
            "workers (bench/_floor.py): its ratio_pct is the most this benchmark can show with "
            "these devices on these cores; reached_pct: the real server's rate as a share of it",
            f"floor_store: {floor_n} devices against the floor plus the store's part of each "
            "onboarding, as the real server makes it (bench/onboarding.py _StoreWork: the "
            "registration check at hello (which writes nothing), the device and the transaction "
            "recording the certificate, the used challenge and the audit event at proof; "
            "SQLite, as many workers): the most a server that keeps the same records can reach; "
            "floor_pct: its rate as a share of the floor's; reached_pct: the real server's rate "
            "as a share of it",
            f"floor_app: {floor_n} devices against the floor answering with the server's own "
            "device logic (bench/onboarding.py _AppWork: host/server/deviceapi.py answer, on an "
            "application built as an API worker builds it, with a registry of its own; its log "
            "lines to a file), as many workers: all the real server does but its HTTP framework "
            "(uvicorn, the ASGI app); floor_pct: its rate as a share of the floor's; "
            "logic_cpu_ms: its server CPU beyond the floor with the store's; framework_cpu_ms: "
            "the real server's beyond it; reached_pct: the real server's rate as a share of it",
            f"floor/server_cpu_budget_ms: the most server CPU per onboarding with which a server "
            f"can reach {_GOAL_SHARE:.0%} of the floor's rate, at best (its devices spending the "
            "floor's devices' CPU, the cores as busy as under the floor): the floor's server and "
            f"devices CPU per onboarding / {_GOAL_SHARE:g}, less the devices'; over_budget_ms: a "
            "side's server CPU per onboarding beyond it",
            f"the fleet and the floors' devices onboard in {_ROUNDS} waves each, alternating (each "
            "side first in turn), with every server up: rates and CPU are sums over a side's waves",
            "floor/reached_pct_low, reached_pct_high: the real server's rate as a share of the "
            "floor's in each round (its wave and the floor's wave of that round), the lowest and "
            "the highest: how far the share moves within the run",
            "app_profiled: the onboarding logic alone (no HTTP, TLS, broker) under cProfile",
            f"one_device: hello + proof of one device on a quiet server ({_SOLO} in a row), "
            "TLS handshake included",
            f"the simulated devices run in {_DEVICE_PROCESSES} processes (devices_cpu_ms: theirs)",
            *[f"profile: {line}" for line in profile],
            *errors[:3],
        ],
    }
