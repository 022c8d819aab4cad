"""The store's onboarding path (devices.get, challenges.complete on the DBAPI,
host/server/store) answers exactly as an ORM read of the same rows through the schema's
models, keeps its transactions whole and always gives its connection back to the pool; on
SQLite and, where its binaries are installed, on a private PostgreSQL."""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from host.server.db import make_engine
from host.server.models import AuditEvent, Batch, Device
from host.server.schemas import DeviceRecord
from host.server.store import LOCAL, Actor, ConstraintViolation, Store

TENANT = "acme"
_databases = itertools.count()


@pytest.fixture
def reg(database: str | Path) -> Iterator[Store]:
    r = Store(database)
    r.tenants.create(TENANT)
    r.batches.create("b1", TENANT)
    yield r
    assert r.db.checked_out == 0
    r.close()


def new_device(reg: Store, batch: str = "b1") -> str:
    pub = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    device_id = hashlib.sha256(pub).hexdigest()
    reg.batches.import_devices(batch, [f"{device_id},{pub.hex()}"])
    return device_id


def dev(reg: Store, device_id: str) -> DeviceRecord:
    d = reg.devices.get(device_id)
    assert d is not None
    return d


def complete(
    reg: Store, order: int, device_id: str, *args: Any, proof_hash: str = "h" * 64, **kw: Any
) -> bool:
    """challenges.complete of the challenge of this `order`, with the device as a proof would
    have read it."""
    return reg.challenges.complete(order, dev(reg, device_id), *args, proof_hash=proof_hash, **kw)


def orm(reg: Store) -> Session:
    engine = make_engine(reg.db.url)
    return Session(engine)


def orm_device(reg: Store, device_id: str) -> DeviceRecord:
    """The same device read through the schema's ORM models."""
    with orm(reg) as s:
        d, b = s.execute(
            select(Device, Batch).join(Batch).where(Device.device_id == device_id)
        ).one()
        out = DeviceRecord(
            device_id=d.device_id,
            batch=b.name,
            tenant=b.tenant,
            state=d.state,
            disabled=d.disabled,
            serial=d.serial,
            not_after=d.not_after,
            onboarded_at=d.onboarded_at,
            revoked_at=d.revoked_at,
            last_seen=d.last_seen,
            last_telemetry=None if d.last_telemetry is None else json.loads(d.last_telemetry),
            public_key=d.public_key,
            cert_der=d.cert_der,
            batch_active=b.active,
            policy=b.policy,
            policy_exception=d.policy_exception,
            used_challenge=d.used_challenge,
            used_proof=d.used_proof,
        )
    s.get_bind().dispose()  # type: ignore[union-attr]
    return out


def fields(x: Any) -> dict[str, Any]:
    if isinstance(x, DeviceRecord):
        return {name: getattr(x, name) for name in DeviceRecord.model_fields}
    return dict(vars(x))


def assert_same(hot: Any, orm: Any) -> None:
    """Equal and of the same types field by field (1 == True: equality alone would not do)."""
    a, b = fields(hot), fields(orm)
    assert a == b
    for name in a:
        assert type(a[name]) is type(b[name]), (name, a[name], b[name])


def used(reg: Store, device_id: str) -> tuple[int | None, str | None]:
    """The device's last used challenge and its proof's digest, as the ORM reads them."""
    d = orm_device(reg, device_id)
    return d.used_challenge, d.used_proof


def audit_count(reg: Store) -> int:
    with orm(reg) as s:
        n = len(list(s.scalars(select(AuditEvent.id))))
    s.get_bind().dispose()  # type: ignore[union-attr]
    return n


def open_transactions(reg: Store) -> int:
    """Transactions left open in the database by anyone (none may be, between calls)."""
    if reg.db.dialect == "sqlite":
        assert reg.path is not None
        # A writer blocked by a transaction left open fails at once with busy_timeout 0.
        import sqlite3

        db = sqlite3.connect(reg.path, timeout=0, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
            return 0
        except sqlite3.OperationalError:
            return 1
        finally:
            db.close()
    engine = make_engine(reg.db.url)
    try:
        with engine.connect() as conn:
            q = text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state LIKE 'idle in transaction%'"
            )
            return int(conn.execute(q).scalar_one())
    finally:
        engine.dispose()


def disable(reg: Store, device_id: str) -> None:
    """As the lifecycle disables: the policy layer's mark, then the state."""
    reg.devices.set_policy_exception(device_id, True)
    reg.devices.set_disabled(dev(reg, device_id), True, LOCAL)


def test_device_reads_as_the_orm_does(reg: Store) -> None:
    plain = new_device(reg)
    busy = new_device(reg)
    revoked = new_device(reg)
    assert complete(reg, 1, revoked, b"der", 0x5A, 1.8e9, 999.0)
    reg.devices.revoke(dev(reg, revoked), LOCAL)
    assert complete(reg, 2**56 + 3, busy, b"\x30\x82cert", 0xABC, 1.9e9, 1000.5)
    assert reg.devices.record_telemetry(busy, {"temp": 21.5, "ok": True}, 1001.25, TENANT)
    disable(reg, busy)  # disabled, with a policy exception
    reg.batches.set_active("b1", False)
    for device_id in (plain, busy, revoked):
        hot = reg.devices.get(device_id)
        assert hot is not None
        assert_same(hot, orm_device(reg, device_id))
        assert_same(reg.devices.get(device_id, tenant=TENANT), hot)
        assert reg.devices.get(device_id, tenant="other") is None
    d = reg.devices.get(busy)
    assert d is not None
    assert (d.disabled, d.policy_exception, d.batch_active) == (True, True, False)
    assert d.cert_der == b"\x30\x82cert" and d.last_telemetry == {"temp": 21.5, "ok": True}
    r = reg.devices.get(revoked)
    assert r is not None and r.state == "revoked" and isinstance(r.revoked_at, float)
    assert reg.devices.get("0" * 64) is None


def test_the_used_challenge_is_recorded_on_the_device_row(reg: Store) -> None:
    device_id = new_device(reg)
    assert used(reg, device_id) == (None, None)  # a challenge is recorded once used only
    # An order as large as a challenge ID's head gets (expiry in ms, shifted past the nonce).
    order = (4_000_000_000_000 << 16) | 0xBEEF
    assert complete(reg, order, device_id, b"cert", 5, 1.5e9, 77.25, proof_hash="a" * 64)
    assert used(reg, device_id) == (order, "a" * 64)
    hot = dev(reg, device_id)
    assert (hot.used_challenge, hot.used_proof) == (order, "a" * 64)
    assert_same(hot, orm_device(reg, device_id))


def test_onboarding_records_device_and_one_audit_event_per_new_serial(reg: Store) -> None:
    device_id = new_device(reg)
    before = audit_count(reg)
    ok = complete(reg, 1, device_id, b"c1", 0x1F, 2e9, 10.0, actor=Actor("x", "y"))
    assert ok is True
    d = orm_device(reg, device_id)
    assert (d.state, d.cert_der, d.serial, d.not_after, d.onboarded_at) == (
        "onboarded",
        b"c1",
        "1f",
        2e9,
        10.0,
    )
    [event] = [a for a in reg.audit.list(TENANT) if a.action == "device.onboard"]
    assert (event.actor, event.source, event.target) == ("x", "y", f"device:{device_id}")
    assert event.detail == {"serial": "1f"}
    # The same serial again (a retry): the first onboarding time stays, nothing new is logged.
    assert complete(reg, 2, device_id, b"c2", 0x1F, 2e9, 20.0)
    d = orm_device(reg, device_id)
    assert (d.cert_der, d.onboarded_at) == (b"c2", 10.0)
    assert audit_count(reg) == before + 1


def test_policy_cleared_onboarding_clears_the_exception(reg: Store) -> None:
    device_id = new_device(reg)
    disable(reg, device_id)
    reg.devices.set_disabled(dev(reg, device_id), False, LOCAL)
    reg.devices.set_policy_exception(device_id, True)  # as a crash between deny and enable
    assert complete(reg, 1, device_id, b"c", 1, 2e9, 1.0)
    assert orm_device(reg, device_id).policy_exception is True
    assert complete(reg, 2, device_id, b"c", 1, 2e9, 2.0, policy_cleared=True)
    assert orm_device(reg, device_id).policy_exception is False


@pytest.mark.parametrize("again", [5, 4], ids=["the same", "one given before it"])
def test_a_used_challenge_changes_nothing(reg: Store, again: int) -> None:
    device_id = new_device(reg)
    assert complete(reg, 5, device_id, b"first", 5, 2e9, 1.0, proof_hash="h1")
    device, events = orm_device(reg, device_id), audit_count(reg)
    assert complete(reg, again, device_id, b"other", 6, 3e9, 2.0, proof_hash="h2") is False
    assert orm_device(reg, device_id) == device
    assert used(reg, device_id) == (5, "h1")
    assert audit_count(reg) == events
    assert open_transactions(reg) == 0


def test_a_challenge_given_after_the_used_one_opens(reg: Store) -> None:
    device_id = new_device(reg)
    assert complete(reg, 10, device_id, b"first", 5, 2e9, 1.0, proof_hash="h1")
    assert complete(reg, 11, device_id, b"second", 6, 2e9, 2.0, proof_hash="h2")
    assert used(reg, device_id) == (11, "h2")
    assert dev(reg, device_id).cert_der == b"second"


@pytest.mark.parametrize("change", ["disable", "revoke"])
def test_device_out_of_onboarding_leaves_its_challenge_unused(reg: Store, change: str) -> None:
    device_id = new_device(reg)
    (
        disable(reg, device_id)
        if change == "disable"
        else reg.devices.revoke(dev(reg, device_id), LOCAL)
    )
    device, events = orm_device(reg, device_id), audit_count(reg)
    assert complete(reg, 1, device_id, b"cert", 5, 2e9, 1.0, proof_hash="h") is False
    assert used(reg, device_id) == (None, None)  # not used
    assert orm_device(reg, device_id) == device
    assert audit_count(reg) == events
    assert open_transactions(reg) == 0


def test_unknown_device_consumes_nothing(reg: Store) -> None:
    device_id = new_device(reg)
    gone = dev(reg, device_id).model_copy(update={"device_id": "0" * 64})
    assert reg.challenges.complete(1, gone, b"c", 5, 2e9, 1.0, proof_hash="h") is False
    assert used(reg, device_id) == (None, None)
    assert open_transactions(reg) == 0


def test_failure_inside_onboarding_rolls_everything_back(
    reg: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    device_id = new_device(reg)
    device, events = orm_device(reg, device_id), audit_count(reg)
    # The audit insert, the last statement, fails in the database (audit.at is NOT NULL).
    monkeypatch.setattr(
        "host.server.store.audit.time", SimpleNamespace(time=lambda: None, monotonic=time.monotonic)
    )
    with pytest.raises(ConstraintViolation):
        complete(reg, 1, device_id, b"cert", 5, 2e9, 1.0, proof_hash="h")
    monkeypatch.undo()
    assert orm_device(reg, device_id) == device  # nor its used challenge
    assert audit_count(reg) == events
    assert reg.db.checked_out == 0
    assert open_transactions(reg) == 0
    assert complete(reg, 1, device_id, b"cert", 5, 2e9, 1.0, proof_hash="h")


def test_a_challenge_used_again_is_refused_and_the_connection_goes_back(reg: Store) -> None:
    device_id = new_device(reg)
    assert complete(reg, 7, device_id, b"cert", 5, 2e9, 1.0, proof_hash="h1")
    for _ in range(10):  # more than a pool keeps
        assert complete(reg, 7, device_id, b"c2", 6, 2e9, 2.0, proof_hash="h2") is False
        assert reg.db.checked_out == 0
    assert open_transactions(reg) == 0
    assert used(reg, device_id) == (7, "h1")
    assert dev(reg, device_id).cert_der == b"cert"


def test_sqlite_pool_connections_keep_their_pragmas(tmp_path: Path) -> None:
    """Every connection of the pool is set up as database.py says."""
    reg = Store(tmp_path / "r.sqlite")
    try:
        with reg.db.transaction(write=False) as tx:
            values = [
                next(iter((tx.one(f"PRAGMA {p}") or {}).values()))
                for p in ("journal_mode", "busy_timeout", "foreign_keys", "synchronous")
            ]
    finally:
        reg.close()
    assert values == ["wal", 10_000, 1, 1]  # synchronous 1: NORMAL


def test_postgres_parameters_are_rewritten_once_and_exactly() -> None:
    from host.server.store.database import Database

    db = Database("postgresql://nobody@127.0.0.1:1/none", migrate=False)  # never connects
    sql = "SELECT a FROM t WHERE b = :b AND c LIKE '5%' AND d = :d_2 AND e = x::text"
    assert db.sql(sql) == (
        "SELECT a FROM t WHERE b = %(b)s AND c LIKE '5%%' AND d = %(d_2)s AND e = x::text"
    )
    assert db.sql(sql) is db.sql(sql)  # cached
