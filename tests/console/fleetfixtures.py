"""What the fleet, OTA and audit page tests share: device identities to import, batches and
onboarded devices made through the store, and a release published with the `qlink` CLI."""

from __future__ import annotations

import itertools
import re
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from host.server.deviceid import device_id_of
from host.server.store import Actor

TEST = Actor("test", "local")
_serial = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}-{int(time.time() * 1000) % 10**8}-{next(_serial)}"


def identity() -> tuple[str, str]:
    """A new device's (ID, public key hex)."""
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    return device_id_of(point), point.hex()


def identities(n: int) -> list[tuple[str, str]]:
    return [identity() for _ in range(n)]


def csv_text(rows: list[tuple[str, str]], header: bool = True) -> str:
    lines = ["device_id,public_key"] if header else []
    lines += [f"{d},{k}" for d, k in rows]
    return "\n".join(lines) + "\n"


def make_batch(console: Any, tenant: str = "acme", prefix: str = "b") -> str:
    name = unique(prefix)
    console.store.batches.create(name, tenant, None, TEST)
    return name


def device_ids(console: Any, batch: str, tenant: str = "acme") -> list[str]:
    return sorted(d.device_id for d in console.store.devices.list(tenant, batch))


def onboarded_batch(console: Any, n: int, tenant: str = "acme") -> tuple[str, list[str]]:
    """A batch of `n` devices marked onboarded with an OTA key (as a proof would leave them;
    set in the store: the pages under test only read these rows)."""
    name = make_batch(console, tenant, "ota")
    rows = identities(n)
    console.store.batches.import_devices(name, csv_text(rows), tenant=tenant, actor=TEST)
    for device_id, _key in rows:
        _, ota_point = identity()
        console.sql(
            "UPDATE devices SET state = 'onboarded', onboarded_at = :now, ota_key = :k"
            " WHERE device_id = :d",
            {"now": time.time(), "k": bytes.fromhex(ota_point), "d": device_id},
        )
    return name, sorted(d for d, _ in rows)


def publish_release(console: Any, tmp: Path, version: str) -> str:
    """A small release of the unix board, built and published with the `qlink` CLI; its ID."""
    tree = tmp / f"tree-{version}"
    (tree / "agent").mkdir(parents=True)
    (tree / "agent" / "version.py").write_text(f'VERSION = "{version}"\n')
    (tree / "main.py").write_text("# a test release\n")
    bundle = tmp / f"unix-{version}.qota"
    built = console.proc.cli(
        "ota", "build", str(tree), "--version", version, "--board", "unix", "--out", str(bundle)
    )
    assert bundle.exists(), built.stderr
    console.proc.cli("ota", "publish", str(bundle))
    return f"unix-{version}"


def csrf_of(page: httpx.Response) -> str:
    """The CSRF token a page's forms carry."""
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert found, "the page has no form with a csrf field"
    return found.group(1)
