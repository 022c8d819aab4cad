"""Devices for the device pages' tests: batches of registered identities, and devices that
onboarded through the running server (a real certificate). `console` is conftest.py's
`Console` (the running server and its store)."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from hil.simdevice import SimDevice, pubkey_bytes
from host.server.store import Actor

TEST = Actor("test", "local")
_serial = itertools.count(1)


def new_batch(console: Any, tenant: str = "acme", stem: str = "dev") -> str:
    """A new, empty batch of `tenant`; its name."""
    name = f"{stem}-{tenant}-{next(_serial)}"
    console.store.batches.create(name, tenant, None, TEST)
    return name


def device(console: Any) -> SimDevice:
    return SimDevice(console.url, console.proc.root_der())


def register(console: Any, batch: str, devices: Iterable[SimDevice], tenant: str) -> None:
    lines = "\n".join(d.csv_line() for d in devices)
    console.store.batches.import_devices(batch, lines, tenant=tenant, fmt="csv", actor=TEST)


def registered(console: Any, batch: str, n: int, tenant: str = "acme") -> list[str]:
    """`n` new identities in `batch` (never onboarded); their IDs, sorted."""
    pubs = [pubkey_bytes(ec.generate_private_key(ec.SECP256R1()).public_key()) for _ in range(n)]
    lines = "\n".join(f"{hashlib.sha256(p).hexdigest()},{p.hex()}" for p in pubs)
    console.store.batches.import_devices(batch, lines, tenant=tenant, fmt="csv", actor=TEST)
    return sorted(hashlib.sha256(p).hexdigest() for p in pubs)


def onboarded(console: Any, batch: str, tenant: str = "acme") -> SimDevice:
    """A device registered in `batch` and onboarded through the server (its certificate
    issued by the server's CA)."""
    d = device(console)
    register(console, batch, [d], tenant)
    answer = d.onboard()
    assert answer.status == 200, answer.body
    return d


def add_telemetry(
    console: Any, device_id: str, samples: list[tuple[float, dict[str, object]]]
) -> None:
    """Store telemetry messages as the server does (one slot per seq mod 64)."""
    for at, body in samples:
        seq = body.get("seq", 0)
        assert isinstance(seq, int)
        console.sql(
            "INSERT INTO telemetry_samples (device_id, slot, at, body) VALUES (:d, :s, :at, :b)"
            " ON CONFLICT (device_id, slot) DO UPDATE SET at = excluded.at, body = excluded.body",
            {"d": device_id, "s": seq % 64, "at": at, "b": json.dumps(body)},
        )
