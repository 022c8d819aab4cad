"""A fleet that stays online: N simulated devices onboarded, then held connected to the real
server's broker from one process (hil/mqttfleet.py: asyncio, one TLS connection each, their own
certificates), publishing telemetry every interval. In the same run, each figure next to its
floor or peer:
- memory per connection of the managed broker (and of the server) against a bare Mosquitto with
  the same TLS listener and nothing else, holding the same devices;
- telemetry the server absorbed, its CPU per message and the `last_seen` lag, against a
  subscriber that receives the same messages on the same admin listener and only counts them;
- a `ping` command's round trip through the CLI's path (`Application.send_command` -> device
  `done` recorded in the store), against the same signed command published by an admin client
  straight to the broker and the device's `done` read back by that client;
- renewals per second (a `renew` command outstanding, then the device's hello + proof) next to
  onboardings per second of as many fresh devices, same client, same concurrency, back to back.

Environment: QLINK_BENCH_FLEET (default 10000), QLINK_BENCH_INTERVAL_S (10),
QLINK_BENCH_WINDOW_S (60: the measured window, after one interval of warm-up),
QLINK_BENCH_COMMANDS (200), QLINK_BENCH_RENEWALS (500), QLINK_BENCH_CONCURRENCY (32),
QLINK_BENCH_WORKERS (default: one API worker per core).
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._fleet import (
    AdminRoundTrip,
    BareBroker,
    FloorSubscriber,
    OnboardPool,
    admin_port,
    broker_pid,
    cpu_s,
    quantile,
    register,
    rss_kib,
    server_cpu_s,
    server_pids,
    server_rss_kib,
    specs,
)
from hil.mqttfleet import FleetProcess, raise_nofile
from hil.serverproc import ServerProcess
from hil.simdevice import SimDevice

_SAMPLED = 200  # devices whose every telemetry message is timed (publish -> last_seen)
_POLL_S = 0.5  # how often the store is read for their last_seen (each message stays 10 s)


def _env(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _ms_each(seconds: float, n: int) -> float:
    return _ms(seconds / max(n, 1))


def _kib_per(delta_kib: int, n: int) -> float:
    return round(delta_kib / max(n, 1), 2)


_LAST_SEEN = (
    "SELECT device_id, json_extract(last_telemetry, '$.seq'), last_seen FROM devices"
    " WHERE device_id IN ({}) AND last_seen IS NOT NULL"
)


class _Store:
    """The registry read directly (SQLite, read-only): the server's record of its devices."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)

    def seq_sum(self) -> int:
        """Telemetry messages stored so far, counted by each device's last sequence number."""
        row = self.db.execute(
            "SELECT COALESCE(SUM(json_extract(last_telemetry, '$.seq')), 0) FROM devices"
        ).fetchone()
        return int(row[0])

    def last_seen(self, device_ids: Sequence[str]) -> list[tuple[str, int, float]]:
        marks = ",".join("?" * len(device_ids))  # one bound parameter per device
        rows = self.db.execute(_LAST_SEEN.format(marks), list(device_ids)).fetchall()
        return [(r[0], int(r[1]), float(r[2])) for r in rows]

    def close(self) -> None:
        self.db.close()


def _lags(
    published: dict[str, list[tuple[int, float]]], seen: dict[tuple[str, int], float]
) -> list[float]:
    """Seconds from each sampled message's publish to the time it arrived (`seen`)."""
    out = []
    for device, log in published.items():
        for seq, at in log:
            arrived = seen.get((device, seq))
            if arrived is not None:
                out.append(arrived - at)
    return out


def _settle(pids: list[int], busy: float = 0.05, step_s: float = 0.5, limit_s: float = 60) -> None:
    """Return once the processes together used under `busy` of a core over `step_s`."""
    deadline = time.monotonic() + limit_s
    before = sum(cpu_s(p) for p in pids)
    while time.monotonic() < deadline:
        time.sleep(step_s)
        now = sum(cpu_s(p) for p in pids)
        if now - before < busy * step_s:
            return
        before = now


def _hold(
    fleet: FleetProcess, concurrency: int, broker: int, server: ServerProcess | None
) -> dict[str, Any]:
    """Connect every device; memory and CPU of the broker (and server) around it."""
    b0, f0 = rss_kib(broker), rss_kib(fleet.pid)
    s0 = server_rss_kib(server) if server else 0
    scpu0 = server_cpu_s(server) if server else 0.0
    report: dict[str, Any] = fleet.call("connect", concurrency=concurrency)
    # The server handles each device's `online` event after the device is connected: wait
    # until it and the broker have done so (their CPU idle again) before reading them.
    _settle([broker, *(server_pids(server) if server else [])])
    n = int(report["online"])
    return {
        **report,
        "broker_kib": rss_kib(broker) - b0,
        "broker_kib_before": b0,
        "fleet_kib": rss_kib(fleet.pid) - f0,
        "server_kib": (server_rss_kib(server) - s0) if server else 0,
        "server_kib_before": s0,
        "server_cpu_s": (server_cpu_s(server) - scpu0) if server else 0.0,
        "per_s": n / max(float(report["seconds"]), 1e-9),
    }


def _window(
    proc: ServerProcess,
    fleet: FleetProcess,
    store: _Store,
    sampled: list[str],
    interval_s: float,
    window_s: float,
) -> dict[str, Any]:
    """Telemetry on; after one interval of warm-up, a measured window."""
    broker = broker_pid(proc)
    floor = FloorSubscriber(proc.data_dir, admin_port(proc), sampled)
    try:
        fleet.call("sample", sampled)
        fleet.call("start_telemetry", interval_s)
        time.sleep(interval_s)  # every device has published once: the rate is steady
        stored0, published0 = store.seq_sum(), fleet.call("stats")["published"]
        cpu0, bcpu0, fcpu0 = server_cpu_s(proc), cpu_s(broker), cpu_s(fleet.pid)
        floor.start()
        t0 = time.monotonic()
        seen: dict[tuple[str, int], float] = {}
        while (now := time.monotonic()) < t0 + window_s:
            for device, seq, at in store.last_seen(sampled):
                seen.setdefault((device, seq), at)
            time.sleep(min(_POLL_S, max(0.0, t0 + window_s - now)))
        elapsed = time.monotonic() - t0
        received, floor_cpu, arrivals = floor.stop()
        cpu, bcpu = server_cpu_s(proc) - cpu0, cpu_s(broker) - bcpu0
        fcpu = cpu_s(fleet.pid) - fcpu0
        stored, published = store.seq_sum() - stored0, fleet.call("stats")["published"] - published0
        for device, seq, at in store.last_seen(sampled):
            seen.setdefault((device, seq), at)
    finally:
        floor.close()
    log = fleet.call("publish_log", sampled)
    lags = _lags(log, seen)
    floor_lags = _lags(log, {(d, s): at for d, s, at in arrivals})
    return {
        "elapsed": elapsed,
        "published": published,
        "stored": stored,
        "server_cpu": cpu,
        "broker_cpu": bcpu,
        "fleet_cpu": fcpu,
        "lags": lags,
        "floor_received": received,
        "floor_cpu": floor_cpu,
        "floor_lags": floor_lags,
    }


def _commands(
    proc: ServerProcess, fleet: FleetProcess, real: list[str], bare: list[str]
) -> dict[str, Any]:
    """Ping round trips: the CLI's path to `done` in the store (and the part of it until the
    device had the command), then the admin client's floor on other devices."""
    from host.server.application import Application
    from host.server.settings import Settings

    app = Application.for_operator(Settings(data_dir=proc.data_dir))
    sent: dict[str, tuple[float, int]] = {}
    totals: list[float] = []
    errors: list[str] = []
    try:
        app.send_command(real[0], "ping")  # the command link connects once, off the clock
        for device in real[1:]:
            t0 = time.monotonic()
            cmd = app.send_command(device, "ping")
            sent[device] = (t0, cmd.seq)
            while time.monotonic() < t0 + 5.0:
                now = app.store.commands.get(device, cmd.seq)
                if now is not None and now.state == "done":
                    totals.append(time.monotonic() - t0)
                    break
                time.sleep(0.001)
            else:
                errors.append(f"ping to {device[:12]}: not done in 5 s")
    finally:
        app.close()
    records = fleet.call("commands", list(sent))
    to_device = [
        c["received_at"] - sent[d][0]
        for d, cs in records.items()
        for c in cs
        if c["seq"] == sent[d][1]
    ]
    rt = AdminRoundTrip(proc.data_dir, admin_port(proc))
    floors = []
    try:
        for device in bare:
            try:
                floors.append(rt.ping(device, 1))
            except TimeoutError as e:
                errors.append(str(e))
    finally:
        rt.close()
    return {"totals": totals, "to_device": to_device, "floors": floors, "errors": errors}


def _renewals(
    proc: ServerProcess, pool: OnboardPool, indices: list[int], concurrency: int
) -> dict[str, Any]:
    """Fresh devices onboard (the peer), then the same devices renew after a `renew` command
    (queued: they are not connected), same client and concurrency, back to back."""
    from host.server.application import Application
    from host.server.settings import Settings

    broker = broker_pid(proc)
    ob_bcpu0, ob_scpu0 = cpu_s(broker), server_cpu_s(proc)
    answers, lat_on, err_on, wall_on = pool.onboard(indices, concurrency)
    ob_bcpu, ob_scpu = cpu_s(broker) - ob_bcpu0, server_cpu_s(proc) - ob_scpu0
    app = Application.for_operator(Settings(data_dir=proc.data_dir))
    try:
        t0 = time.monotonic()
        for i in indices:
            app.renew(pool.devices[i].device_id)
        commands_s = time.monotonic() - t0
    finally:
        app.close()
    b0, bcpu0, scpu0 = rss_kib(broker), cpu_s(broker), server_cpu_s(proc)
    renewed, lat_re, err_re, wall_re = pool.onboard(indices, concurrency)
    bcpu, scpu = cpu_s(broker) - bcpu0, server_cpu_s(proc) - scpu0
    replaced = sum(
        1
        for i in renewed
        if i in answers and renewed[i]["certificate_b64"] != answers[i]["certificate_b64"]
    )
    return {
        "onboarded": len(answers),
        "onboard_per_s": len(answers) / wall_on,
        "onboard_p95": quantile(lat_on, 95),
        "onboard_broker_cpu": ob_bcpu,
        "onboard_server_cpu": ob_scpu,
        "renewed": len(renewed),
        "replaced": replaced,
        "renew_per_s": len(renewed) / wall_re,
        "renew_p95": quantile(lat_re, 95),
        "renew_commands_s": commands_s,
        "broker_kib": rss_kib(broker) - b0,
        "broker_cpu": bcpu,
        "server_cpu": scpu,
        "errors": err_on[:3] + err_re[:3],
    }


def run() -> dict:
    n = _env("QLINK_BENCH_FLEET", 10_000)
    interval_s = float(_env("QLINK_BENCH_INTERVAL_S", 10))
    window_s = float(_env("QLINK_BENCH_WINDOW_S", 60))
    n_cmd = _env("QLINK_BENCH_COMMANDS", 200)
    n_renew = _env("QLINK_BENCH_RENEWALS", 500)
    concurrency = _env("QLINK_BENCH_CONCURRENCY", 32)
    cores = os.cpu_count() or 1
    workers = _env("QLINK_BENCH_WORKERS", cores)
    nofile = raise_nofile()  # the server, its broker and the fleet inherit it
    with tempfile.TemporaryDirectory(prefix="qlink-bench-") as tmp:
        data = Path(tmp) / "server"
        proc = ServerProcess(data, extra_args=["--workers", str(workers)]).start()
        pool: OnboardPool | None = None
        fleet: FleetProcess | None = None
        store: _Store | None = None
        try:
            root = proc.root_der()
            devices = [SimDevice(proc.api_url, root, timeout_s=60) for _ in range(n + n_renew)]
            register(proc, {"fleet": devices[:n], "peers": devices[n:]})
            pool = OnboardPool(devices)  # before any thread of ours
            answers, lat, errors, wall = pool.onboard(range(n), concurrency)
            onboarded = len(answers)
            fleet_specs = specs(devices, answers, range(n))
            bare_hold: dict[str, Any]
            with BareBroker(data, Path(tmp) / "bare") as bare:
                bare_fleet = FleetProcess(
                    fleet_specs, Path(tmp) / "bare-fleet", address=("127.0.0.1", bare.port)
                ).start()
                try:
                    bare_hold = _hold(bare_fleet, 64, bare.pid, None)
                finally:
                    bare_fleet.stop()
            fleet = FleetProcess(
                fleet_specs, Path(tmp) / "fleet", address=("127.0.0.1", proc.broker_port)
            ).start()
            hold = _hold(fleet, 64, broker_pid(proc), proc)
            held = int(hold["online"])
            ids: list[str] = fleet.call("ids")
            step = max(1, len(ids) // (_SAMPLED + 2 * n_cmd + 1))
            spread = ids[::step]
            sampled, rest = spread[:_SAMPLED], spread[_SAMPLED:]
            store = _Store(data / "registry.sqlite")
            broker_before_window = rss_kib(broker_pid(proc))
            win = _window(proc, fleet, store, sampled, interval_s, window_s)
            broker_after_window = rss_kib(broker_pid(proc))
            real, bare_ids = rest[: n_cmd + 1], rest[n_cmd + 1 : 2 * n_cmd + 1]
            cmd = _commands(proc, fleet, real, bare_ids)
            renew = _renewals(proc, pool, list(range(n, n + n_renew)), concurrency)
            stats = fleet.call("stats")
        finally:
            if store is not None:
                store.close()
            if fleet is not None:
                fleet.stop()
            if pool is not None:
                pool.close()
            proc.stop()
    stored_per_s = win["stored"] / win["elapsed"]
    msgs = max(win["stored"], 1)
    floor_msgs = max(win["floor_received"], 1)
    server_us = win["server_cpu"] / msgs * 1e6
    floor_us = win["floor_cpu"] / floor_msgs * 1e6
    cmd_ms, floor_ms = cmd["totals"], cmd["floors"]
    cmd_p95, floor_p95 = quantile(cmd_ms, 95), quantile(floor_ms, 95)
    conn_kib = hold["broker_kib"] / max(held, 1)
    bare_kib = bare_hold["broker_kib"] / max(int(bare_hold["online"]), 1)
    return {
        "figures": {
            "fleet": {
                "devices": n,
                "onboarded": onboarded,
                "held": held,
                "held_at_end": stats["online"],
                "dropped": stats["drops"],
                "connect_per_s": round(hold["per_s"], 1),
                "nofile": nofile[0],
            },
            "onboarding": {
                "per_s": round(onboarded / wall, 1),
                "p95_ms": _ms(quantile(lat, 95)),
                "failed": len(errors),
            },
            "broker_rss": {
                "kib_per_conn": round(conn_kib, 2),
                "mib_held": round((hold["broker_kib_before"] + hold["broker_kib"]) / 1024, 1),
                "after_window_kib_per_conn": _kib_per(
                    broker_after_window - hold["broker_kib_before"], held
                ),
                "window_growth_kib": broker_after_window - broker_before_window,
                "ratio_to_bare": round(conn_kib / bare_kib, 2) if bare_kib > 0 else float("nan"),
            },
            "bare_broker_rss": {
                "kib_per_conn": round(bare_kib, 2),
                "held": int(bare_hold["online"]),
                "connect_per_s": round(bare_hold["per_s"], 1),
            },
            "server_rss": {
                "kib_per_conn": _kib_per(hold["server_kib"], held),
                "mib_before": round(hold["server_kib_before"] / 1024, 1),
                "mib_held": round((hold["server_kib_before"] + hold["server_kib"]) / 1024, 1),
                "connect_cpu_ms_per_conn": round(hold["server_cpu_s"] / max(held, 1) * 1000, 3),
            },
            "fleet_process_rss": {"kib_per_conn": _kib_per(hold["fleet_kib"], held)},
            "telemetry": {
                "offered_per_s": round(win["published"] / win["elapsed"], 1),
                "absorbed_per_s": round(stored_per_s, 1),
                "absorbed_pct": round(100 * win["stored"] / max(win["published"], 1), 1),
                "server_cpu_us_per_msg": round(server_us, 1),
                "broker_cpu_us_per_msg": round(win["broker_cpu"] / msgs * 1e6, 1),
                "fleet_cpu_us_per_msg": round(win["fleet_cpu"] / msgs * 1e6, 1),
                "capacity_per_core_s": round(1e6 / server_us, 0) if server_us else 0,
                "window_s": round(win["elapsed"], 1),
            },
            "last_seen_lag": {
                "p50_ms": _ms(quantile(win["lags"], 50)),
                "p95_ms": _ms(quantile(win["lags"], 95)),
                "max_ms": _ms(max(win["lags"], default=float("nan"))),
                "samples": len(win["lags"]),
            },
            "telemetry_floor": {
                "cpu_us_per_msg": round(floor_us, 1),
                "received_per_s": round(win["floor_received"] / win["elapsed"], 1),
                "lag_p50_ms": _ms(quantile(win["floor_lags"], 50)),
                "lag_p95_ms": _ms(quantile(win["floor_lags"], 95)),
                "server_cpu_ratio": round(server_us / floor_us, 2) if floor_us else 0,
            },
            "command": {
                "p50_ms": _ms(quantile(cmd_ms, 50)),
                "p95_ms": _ms(cmd_p95),
                "to_device_p95_ms": _ms(quantile(cmd["to_device"], 95)),
                "n": len(cmd_ms),
                "connected": held,
            },
            "command_floor": {
                "p50_ms": _ms(quantile(floor_ms, 50)),
                "p95_ms": _ms(floor_p95),
                "n": len(floor_ms),
                "ratio_p95": round(cmd_p95 / floor_p95, 2) if floor_p95 else 0,
            },
            "renewal": {
                "per_s": round(renew["renew_per_s"], 1),
                "p95_ms": _ms(renew["renew_p95"]),
                "n": renew["renewed"],
                "new_certificates": renew["replaced"],
                "ratio_to_onboarding": round(renew["renew_per_s"] / renew["onboard_per_s"], 2),
                "broker_kib_growth": renew["broker_kib"],
                "broker_cpu_ms_each": _ms_each(renew["broker_cpu"], renew["renewed"]),
                "server_cpu_ms_each": _ms_each(renew["server_cpu"], renew["renewed"]),
            },
            "onboarding_peer": {
                "per_s": round(renew["onboard_per_s"], 1),
                "p95_ms": _ms(renew["onboard_p95"]),
                "n": renew["onboarded"],
                "broker_cpu_ms_each": _ms_each(renew["onboard_broker_cpu"], renew["onboarded"]),
                "server_cpu_ms_each": _ms_each(renew["onboard_server_cpu"], renew["onboarded"]),
            },
        },
        "notes": [
            f"{n} devices registered, {held} held connected from one process (hil/mqttfleet.py, "
            f"asyncio + ssl, one certificate each); RLIMIT_NOFILE {nofile[0]}/{nofile[1]} "
            "(the server, its broker and the fleet inherit it)",
            f"{cores} cores shared by the server ({workers} API workers, SQLite), its broker, the "
            "fleet process and the benchmark",
            "broker_rss: the managed Mosquitto's VmRSS growth while the fleet connected, per "
            "connection; bare_broker_rss: a Mosquitto with the same TLS listener (certificate, "
            "CA bundle, CRL, client certificates) and no plugin, ACL or server, same devices",
            f"telemetry: every device publishes every {interval_s:g} s (QoS 1, the documented "
            f"payload); a {window_s:g} s window after {interval_s:g} s of warm-up; absorbed: "
            "messages the store recorded (sum of the devices' last seq); CPU per absorbed message "
            "of the server (main process and workers), the broker and the fleet",
            f"last_seen_lag: {len(sampled)} devices' every message, publish (device's wall clock) "
            "to the store's last_seen (stamped by the server's intake when it handles the "
            "message); telemetry_floor: an admin subscriber in its own process that receives the "
            "same messages (paho, QoS 0, admin listener) and only counts them",
            f"command: {len(cmd_ms)} pings one at a time, Application.send_command (the CLI's "
            "path) to the store showing done (polled every 1 ms); command_floor: the same signed "
            "ping published by an admin client to the device's cmd topic, its done read back by "
            "that client (no store, no event intake, signed off the clock)",
            f"renewal: {n_renew} devices onboard (onboarding_peer), get a renew command "
            f"(queued: they are not connected; {renew['renew_commands_s']:.1f} s for all), then "
            "run hello + proof again; same 4 client processes and concurrency "
            f"({concurrency}); each renewal revokes the old serial (CRL re-published, broker "
            "reloaded): broker_kib_growth, broker and server CPU per renewal",
            *errors[:3],
            *cmd["errors"][:3],
            *renew["errors"],
        ],
    }
