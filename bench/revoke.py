"""Revocation at the broker: how long a connected device keeps its connection once the operator
revokes it, one device at a time and a whole batch at once, and whether it can come back.

Devices are onboarded and held connected from one process (hil/mqttfleet.py), which records
when the broker drops each connection on CLOCK_MONOTONIC, the clock the benchmark starts its
timer on. In the same run, each figure next to its floor:
- one device: `Application.revoke` (the use case `qlink device revoke` runs: the broker's deny,
  the store with its audit event, the CRL re-signed and the broker told to re-read it), against
  the policy driver's deny alone on other devices (the broker's kick, nothing stored);
- a batch: `Application.revoke_batch` (`qlink batch revoke`: one deny for the batch, each device
  revoked in the store, the CRL published once), against the driver's deny of as many devices;
- afterwards, a new connection of each revoked device (refused in the TLS handshake by the CRL,
  or by the broker), next to devices never revoked (accepted).

The use cases run in this process as the CLI runs them, with the broker connection of the
policy driver made beforehand (a CLI process pays that once per command: bench/cli_start.py).

Environment: QLINK_BENCH_REVOKE_SINGLE (default 50), QLINK_BENCH_REVOKE_BATCH (default 1000),
QLINK_BENCH_CONCURRENCY (32).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._fleet import TENANT, OnboardPool, quantile, register, specs
from hil.mqttfleet import FleetProcess, raise_nofile
from hil.serverproc import ServerProcess
from hil.simdevice import SimDevice

_CONTROLS = 5  # devices never revoked: a new connection of theirs must be accepted
_RETRY_SAMPLE = 100  # devices of the revoked batch that try to come back
_DROP_TIMEOUT_S = 10.0


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _singles(
    fleet: FleetProcess, ids: list[str], revoke: Any
) -> tuple[list[float], list[float], int]:
    """Each device revoked alone by `revoke(device_id)`: seconds to its drop, seconds the call
    took, and how many were not dropped within the timeout."""
    drops, calls, missed = [], [], 0
    for device in ids:
        t0 = time.monotonic()
        revoke(device)
        calls.append(time.monotonic() - t0)
        at = fleet.call("wait_dropped", [device], _DROP_TIMEOUT_S)[device]
        if at is None:
            missed += 1
        else:
            drops.append(at - t0)
    return drops, calls, missed


def _batch(fleet: FleetProcess, ids: list[str], revoke: Any) -> dict[str, Any]:
    """All of `ids` revoked by one `revoke()`: each drop's delay and the call's."""
    t0 = time.monotonic()
    result = revoke()
    call = time.monotonic() - t0
    dropped = fleet.call("wait_dropped", ids, _DROP_TIMEOUT_S)
    delays = [at - t0 for at in dropped.values() if at is not None]
    return {"delays": delays, "call": call, "missed": len(ids) - len(delays), "result": result}


def _each(fn: Callable[[str], object], device_ids: list[str]) -> None:
    for device in device_ids:
        fn(device)


def _outcomes(found: dict[str, str]) -> Counter[str]:
    return Counter(found.values())


def run() -> dict:
    n_single = int(os.environ.get("QLINK_BENCH_REVOKE_SINGLE", "50"))
    n_batch = int(os.environ.get("QLINK_BENCH_REVOKE_BATCH", "1000"))
    concurrency = int(os.environ.get("QLINK_BENCH_CONCURRENCY", "32"))
    nofile = raise_nofile()
    from host.server.application import Application
    from host.server.settings import Settings
    from host.server.store import LOCAL

    with tempfile.TemporaryDirectory(prefix="qlink-bench-") as tmp:
        data = Path(tmp) / "server"
        proc = ServerProcess(data).start()
        pool: OnboardPool | None = None
        fleet: FleetProcess | None = None
        app: Application | None = None
        try:
            root = proc.root_der()
            sizes = {
                "singles": n_single,
                "singles-floor": n_single,
                "doomed": n_batch,
                "doomed-floor": n_batch,
                "controls": _CONTROLS,
            }
            devices: list[SimDevice] = []
            groups: dict[str, list[int]] = {}
            for name, size in sizes.items():
                groups[name] = list(range(len(devices), len(devices) + size))
                devices += [SimDevice(proc.api_url, root, timeout_s=60) for _ in range(size)]
            register(proc, {name: [devices[i] for i in idx] for name, idx in groups.items()})
            pool = OnboardPool(devices)  # before any thread of ours
            answers, _lat, errors, _wall = pool.onboard(range(len(devices)), concurrency)
            ids = {name: [devices[i].device_id for i in idx] for name, idx in groups.items()}
            fleet = FleetProcess(
                specs(devices, answers, range(len(devices))),
                Path(tmp) / "fleet",
                address=("127.0.0.1", proc.broker_port),
            ).start()
            connected = [i for name in sizes if name != "controls" for i in ids[name]]
            held = fleet.call("connect", connected, concurrency=64)
            app = service = Application.for_operator(Settings(data_dir=data))
            # The policy driver's broker connection and the CA, made now, off the clock.
            driver = service.policies.drivers["mosquitto"]
            _ = service.ca

            one, one_calls, one_missed = _singles(
                fleet,
                ids["singles"],
                lambda d: service.revoke(d, tenant=TENANT, actor=LOCAL),
            )
            one_floor, _calls, one_floor_missed = _singles(
                fleet, ids["singles-floor"], driver.delete_device
            )
            via = "Application.revoke_batch"
            if hasattr(service, "revoke_batch"):
                batch = _batch(
                    fleet,
                    ids["doomed"],
                    lambda: service.revoke_batch("doomed", tenant=TENANT, actor=LOCAL),
                )
            else:  # the use case is not there: what an operator would do without it
                via = "Application.revoke per device (no revoke_batch)"
                batch = _batch(
                    fleet,
                    ids["doomed"],
                    lambda: _each(
                        lambda d: service.revoke(d, tenant=TENANT, actor=LOCAL), ids["doomed"]
                    ),
                )
            deny_many = getattr(driver, "deny_devices", None)
            floor_ids = ids["doomed-floor"]
            batch_floor = _batch(
                fleet,
                floor_ids,
                (lambda: deny_many(floor_ids))
                if deny_many is not None
                else (lambda: _each(driver.delete_device, floor_ids)),
            )
            time.sleep(1.0)  # the last CRL is in force (the broker re-reads it on a signal)
            step = max(1, n_batch // _RETRY_SAMPLE)
            retried = ids["singles"] + ids["doomed"][::step]
            back = _outcomes(fleet.call("try_connect", retried))
            control = _outcomes(fleet.call("try_connect", ids["controls"]))
            stray = len(fleet.call("dropped")) - (
                len(ids["singles"]) + len(ids["singles-floor"]) + n_batch + len(floor_ids)
            )
        finally:
            if app is not None:
                app.close()
            if fleet is not None:
                fleet.stop()
            if pool is not None:
                pool.close()
            proc.stop()
    one_p95, floor_p95 = quantile(one, 95), quantile(one_floor, 95)
    batch_all = max(batch["delays"], default=float("nan"))
    floor_all = max(batch_floor["delays"], default=float("nan"))
    refused = sum(v for k, v in back.items() if k != "online")
    return {
        "figures": {
            "revoke_one": {
                "p50_ms": _ms(quantile(one, 50)),
                "p95_ms": _ms(one_p95),
                "max_ms": _ms(max(one, default=float("nan"))),
                "call_p50_ms": _ms(quantile(one_calls, 50)),
                "n": len(one),
                "not_dropped": one_missed,
            },
            "revoke_one_floor": {
                "p50_ms": _ms(quantile(one_floor, 50)),
                "p95_ms": _ms(floor_p95),
                "n": len(one_floor),
                "not_dropped": one_floor_missed,
                "ratio_p95": round(one_p95 / floor_p95, 2) if floor_p95 else 0,
            },
            "revoke_batch": {
                "devices": n_batch,
                "all_dropped_ms": _ms(batch_all),
                "p50_ms": _ms(quantile(batch["delays"], 50)),
                "p95_ms": _ms(quantile(batch["delays"], 95)),
                "call_ms": _ms(batch["call"]),
                "not_dropped": batch["missed"],
            },
            "revoke_batch_floor": {
                "all_dropped_ms": _ms(floor_all),
                "p95_ms": _ms(quantile(batch_floor["delays"], 95)),
                "not_dropped": batch_floor["missed"],
                "ratio_all": round(batch_all / floor_all, 2) if floor_all else 0,
            },
            "reconnect": {
                "tried": sum(back.values()),
                "refused": refused,
                "refused_pct": round(100 * refused / max(sum(back.values()), 1), 1),
                "tls_refused": back["tls_refused"],
                "reset": back["reset"],
                "closed": back["closed"],
                "subscribe_refused": back["subscribe_refused"],
                "online": back["online"],
                "controls_online": control["online"],
                "controls": _CONTROLS,
            },
            "fleet": {
                "held": held["online"],
                "onboarded": len(answers),
                "stray_drops": stray,
                "nofile": nofile[0],
            },
        },
        "notes": [
            f"revoke_one: {n_single} devices one at a time, Application.revoke (what `qlink "
            "device revoke` runs) to the device seeing its connection dropped; call_p50_ms: the "
            "use case's own time (deny, store, CRL signed and the broker signalled)",
            f"revoke_one_floor: {n_single} other devices, the policy driver's deny alone "
            "(the broker's kick; nothing stored, no CRL)",
            f"revoke_batch: {n_batch} connected devices of one batch by {via}; all_dropped_ms: "
            "from the call to the last device's drop; revoke_batch_floor: as many other devices "
            "denied by the policy driver in one request",
            f"reconnect: {len(retried)} revoked devices ({n_single} single, every {step}th of "
            "the batch) try a new connection 1 s after the last revocation: tls_refused (the "
            "broker's alert: the CRL), reset or closed (the broker ended it before CONNACK; with "
            "TLS 1.3 a refused client certificate often shows so, the alert overtaken by the "
            "reset: the broker's log says certificate verify failed), "
            f"subscribe_refused (connected, its cmd subscription refused); {_CONTROLS} devices "
            "never revoked try too (controls_online)",
            f"stray_drops: connections dropped that no revocation asked for; held from one "
            f"process (hil/mqttfleet.py), RLIMIT_NOFILE {nofile[0]}/{nofile[1]}",
            *errors[:3],
        ],
    }
