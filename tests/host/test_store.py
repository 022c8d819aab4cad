"""The store (host/server/store): import names every bad row with its line number and stores
nothing; batch names; the challenge and telemetry records."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from host.server.identities import parse_import
from host.server.schemas import STATE_REGISTERED
from host.server.store import ImportRejected, Store, StoreError

# P-256 field prime (SEC 2, 2.4.2): y = 1 with this x is not on the curve.
_P = 2**256 - 2**224 + 2**192 + 2**96 - 1


def identity() -> tuple[str, str]:
    pub = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    return hashlib.sha256(pub).hexdigest(), pub.hex()


def line(device_id: str, pub_hex: str) -> str:
    return f"{device_id},{pub_hex}"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Store]:
    r = Store(tmp_path / "registry.sqlite")
    for tenant in ("acme", "globex"):
        r.tenants.create(tenant)
    r.batches.create("b1", "acme")
    yield r
    r.close()


def dump(registry: Store) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    with sqlite3.connect(registry.path) as db:
        devices = db.execute("SELECT * FROM devices ORDER BY device_id").fetchall()
        batches = db.execute("SELECT * FROM batches ORDER BY id").fetchall()
    return devices, batches


def test_import_stores_every_row(registry: Store) -> None:
    ids = [identity() for _ in range(3)]
    text = "# device_id,public_key\n\n" + "\n".join(line(*i) for i in ids)
    assert registry.batches.import_devices("b1", text.splitlines()) == 3
    devs = {d.device_id: d for d in registry.devices.list()}
    assert set(devs) == {i[0] for i in ids}
    for device_id, pub_hex in ids:
        d = devs[device_id]
        assert d.public_key == bytes.fromhex(pub_hex)
        assert (d.batch, d.tenant, d.state) == ("b1", "acme", STATE_REGISTERED)
    assert [(b.name, b.devices) for b in registry.batches.list()] == [("b1", 3)]


def test_import_accepts_uppercase_hex(registry: Store) -> None:
    device_id, pub = identity()
    assert registry.batches.import_devices("b1", [line(device_id.upper(), pub.upper())]) == 1
    assert registry.devices.get(device_id) is not None


def _bad_cases() -> list[tuple[str, str, str]]:
    good_id, good_pub = identity()
    other_id, other_pub = identity()
    pub = bytes.fromhex(good_pub)
    compressed = bytes([2 + (pub[-1] & 1)]) + pub[1:33]
    off_curve = b"\x04" + pub[1:33] + (1).to_bytes(32, "big")
    too_big_x = b"\x04" + _P.to_bytes(32, "big") + pub[33:]
    return [
        ("one_field", good_id, "expected 2 fields"),
        ("three_fields", f"{good_id},{good_pub},x", "expected 2 fields"),
        ("short_id", f"{good_id[:63]},{good_pub}", "device ID must be 64 hex"),
        ("non_hex_id", f"{'g' * 64},{good_pub}", "device ID must be 64 hex"),
        ("short_key", f"{good_id},{good_pub[:128]}", "public key must be 130 hex"),
        ("non_hex_key", f"{good_id},{'z' * 130}", "public key must be 130 hex"),
        (
            "compressed_key",
            f"{hashlib.sha256(compressed).hexdigest()},{compressed.hex()}{'00' * 32}",
            "starting with 04",
        ),
        (
            "point_off_curve",
            f"{hashlib.sha256(off_curve).hexdigest()},{off_curve.hex()}",
            "not a point on the P-256 curve",
        ),
        (
            "coordinate_not_below_p",
            f"{hashlib.sha256(too_big_x).hexdigest()},{too_big_x.hex()}",
            "not a point on the P-256 curve",
        ),
        ("id_of_other_key", f"{other_id},{good_pub}", "must equal SHA-256 of the public key"),
        ("id_key_swapped_pair", f"{good_id},{other_pub}", "must equal SHA-256"),
    ]


@pytest.mark.parametrize(
    ("bad", "reason"), [(c[1], c[2]) for c in _bad_cases()], ids=[c[0] for c in _bad_cases()]
)
def test_bad_row_is_named_and_nothing_is_stored(registry: Store, bad: str, reason: str) -> None:
    good = [line(*identity()) for _ in range(2)]
    before = dump(registry)
    with pytest.raises(ImportRejected) as info:
        registry.batches.import_devices("b1", [good[0], bad, good[1]])
    assert [(e.line, reason in e.reason) for e in info.value.errors] == [(2, True)]
    assert "line 2" in str(info.value) and "nothing imported" in str(info.value)
    assert dump(registry) == before


def test_every_bad_row_is_listed_in_line_order(registry: Store) -> None:
    a = line(*identity())
    rows = [a, "nonsense", line(*identity()), a, "", f"{'0' * 64},{'04' + '00' * 64}"]
    with pytest.raises(ImportRejected) as info:
        registry.batches.import_devices("b1", rows)
    assert [e.line for e in info.value.errors] == [2, 4, 6]
    assert info.value.errors[1].reason == "duplicate of line 1"
    assert registry.devices.list() == []


def test_already_registered_device_rejects_the_whole_file(registry: Store) -> None:
    first = line(*identity())
    registry.batches.import_devices("b1", [first])
    registry.batches.create("b2")
    before = dump(registry)
    with pytest.raises(ImportRejected) as info:
        registry.batches.import_devices("b2", [line(*identity()), first])
    assert [(e.line, e.reason) for e in info.value.errors] == [
        (2, "device is already registered in another batch")
    ]
    assert dump(registry) == before


def test_import_into_missing_batch_says_how_to_create_it(registry: Store) -> None:
    before = dump(registry)
    with pytest.raises(StoreError, match="qlink batch create nope"):
        registry.batches.import_devices("nope", [line(*identity())])
    assert dump(registry) == before


def test_batch_names_are_unique(registry: Store) -> None:
    with pytest.raises(StoreError, match="already exists"):
        registry.batches.create("b1", "acme")
    assert [b.name for b in registry.batches.list()] == ["b1"]
    # Names are per tenant: another tenant's "b1" neither collides nor learns of acme's.
    registry.batches.create("b1", "globex")
    assert [(b.tenant, b.name) for b in registry.batches.list()] == [
        ("acme", "b1"),
        ("globex", "b1"),
    ]
    with pytest.raises(StoreError, match="exists in tenants acme, globex; add --tenant"):
        registry.batches.import_devices("b1", [line(*identity())])


@pytest.mark.parametrize("name", ["", "a,b", "x" * 129])
def test_bad_batch_name_is_refused(registry: Store, name: str) -> None:
    with pytest.raises(StoreError, match="batch name"):
        registry.batches.create(name)


def test_parse_import_boundary_lengths() -> None:
    device_id, pub = identity()
    rows, errors = parse_import([line(device_id, pub)])
    assert errors == [] and rows[0].line == 1 and rows[0].public_key == bytes.fromhex(pub)
    _, errors = parse_import([line(device_id + "0", pub)])
    assert errors[0].reason == "device ID must be 64 hex characters"
    _, errors = parse_import([line(device_id, pub + "00")])
    assert errors[0].reason == "public key must be 130 hex characters"


def test_database_runs_in_wal_mode(registry: Store) -> None:
    with sqlite3.connect(registry.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_challenge_is_consumed_once(registry: Store) -> None:
    device_id, pub = identity()
    registry.batches.import_devices("b1", [line(device_id, pub)])
    dev = registry.devices.get(device_id)
    assert dev is not None
    assert registry.challenges.complete(9, dev, b"cert", 5, 1.0, 2.0, proof_hash="h1")
    assert not registry.challenges.complete(9, dev, b"other", 6, 1.0, 3.0, proof_hash="h2")
    d = registry.devices.get(device_id)
    assert d is not None and (d.state, d.cert_der, d.serial) == ("onboarded", b"cert", "5")
    assert (d.used_challenge, d.used_proof) == (9, "h1")


def test_telemetry_of_unknown_device_is_not_stored(registry: Store) -> None:
    assert not registry.devices.record_telemetry("0" * 64, {"seq": 1}, 1.0, "acme")
    device_id, pub = identity()
    registry.batches.import_devices("b1", [line(device_id, pub)])
    assert registry.devices.record_telemetry(device_id, {"seq": 7}, 5.0, "acme")
    d = registry.devices.get(device_id)
    assert d is not None and (d.last_seen, d.last_telemetry) == (5.0, {"seq": 7})


def test_telemetry_under_another_tenant_is_not_stored(registry: Store) -> None:
    # The broker lets a device publish under any tenant with its own ID; only its own counts.
    registry.batches.create("g1", "globex")
    device_id, pub = identity()
    registry.batches.import_devices("b1", [line(device_id, pub)])
    assert not registry.devices.record_telemetry(device_id, {"seq": 9}, 6.0, "globex")
    d = registry.devices.get(device_id)
    assert d is not None and (d.last_seen, d.last_telemetry) == (None, None)


@pytest.mark.parametrize("name", ["a+b", "a#", "#"])
def test_names_with_mqtt_wildcards_are_refused(registry: Store, name: str) -> None:
    # A tenant is a level of every device topic: a wildcard there would widen a subscription.
    with pytest.raises(StoreError, match="tenant"):
        registry.batches.create("ok", name)
    with pytest.raises(StoreError, match="batch name"):
        registry.batches.create(name, "acme")
    assert [b.name for b in registry.batches.list()] == ["b1"]
