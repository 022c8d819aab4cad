"""The store's onboarding path (devices.get, challenges.complete / used on the DBAPI,
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
from host.server.models import AuditEvent, Batch, Challenge, Device
from host.server.schemas import DeviceRecord
from host.server.store import LOCAL, Actor, ChallengeInfo, ConstraintViolation, Store

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
    reg: Store,
    cid: str,
    device_id: str,
    *args: Any,
    challenge: bytes = b"\x01" * 32,
    expires: int = 2**31 - 1,
    **kw: Any,
) -> bool:
    """challenges.complete with the device as a proof would have read it."""
    return reg.challenges.complete(cid, dev(reg, device_id), challenge, expires, *args, **kw)


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
        )
    s.get_bind().dispose()  # type: ignore[union-attr]
    return out


def orm_challenge(reg: Store, cid: str) -> ChallengeInfo:
    with orm(reg) as s:
        c = s.get(Challenge, cid)
        assert c is not None
        out = ChallengeInfo(c.id, c.device_id, c.challenge, c.expires, c.used_at, c.proof_hash)
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


def challenge_row(reg: Store, cid: str) -> tuple[Any, ...]:
    return (orm_challenge(reg, cid).used_at, orm_challenge(reg, cid).proof_hash)


def recorded(reg: Store, cid: str) -> bool:
    """Whether the challenge is recorded as used (as the ORM reads the table)."""
    with orm(reg) as s:
        found = s.get(Challenge, cid) is not None
    s.get_bind().dispose()  # type: ignore[union-attr]
    return found


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
    assert complete(reg, "r" * 32, revoked, b"der", 0x5A, 1.8e9, 999.0)
    reg.devices.revoke(dev(reg, revoked), LOCAL)
    assert complete(reg, "a" * 32, busy, b"\x30\x82cert", 0xABC, 1.9e9, 1000.5)
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


def test_a_used_challenge_reads_as_the_orm_does(reg: Store) -> None:
    device_id = new_device(reg)
    assert reg.challenges.used("c" * 32) is None  # a challenge is recorded once used only
    assert complete(
        reg,
        "c" * 32,
        device_id,
        b"cert",
        5,
        1.5e9,
        77.25,
        challenge=b"\x00\x01" * 16,
        expires=1_800_000_000,
        proof_hash="h" * 64,
    )
    used = reg.challenges.used("c" * 32)
    assert used is not None
    assert_same(used, orm_challenge(reg, "c" * 32))
    assert (used.device_id, used.challenge, used.expires) == (
        device_id,
        b"\x00\x01" * 16,
        1_800_000_000,
    )
    assert (used.used_at, used.proof_hash) == (77.25, "h" * 64)
    assert reg.challenges.used("d" * 32) is None


def test_onboarding_records_device_and_one_audit_event_per_new_serial(reg: Store) -> None:
    device_id = new_device(reg)
    before = audit_count(reg)
    ok = complete(reg, "1" * 32, device_id, b"c1", 0x1F, 2e9, 10.0, actor=Actor("x", "y"))
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
    assert complete(reg, "2" * 32, device_id, b"c2", 0x1F, 2e9, 20.0)
    d = orm_device(reg, device_id)
    assert (d.cert_der, d.onboarded_at) == (b"c2", 10.0)
    assert audit_count(reg) == before + 1


def test_policy_cleared_onboarding_clears_the_exception(reg: Store) -> None:
    device_id = new_device(reg)
    disable(reg, device_id)
    reg.devices.set_disabled(dev(reg, device_id), False, LOCAL)
    reg.devices.set_policy_exception(device_id, True)  # as a crash between deny and enable
    assert complete(reg, "1" * 32, device_id, b"c", 1, 2e9, 1.0)
    assert orm_device(reg, device_id).policy_exception is True
    assert complete(reg, "2" * 32, device_id, b"c", 1, 2e9, 2.0, policy_cleared=True)
    assert orm_device(reg, device_id).policy_exception is False


def test_used_challenge_changes_nothing(reg: Store) -> None:
    device_id = new_device(reg)
    assert complete(reg, "c" * 32, device_id, b"first", 5, 2e9, 1.0, proof_hash="h1")
    device, challenge, events = (
        orm_device(reg, device_id),
        challenge_row(reg, "c" * 32),
        audit_count(reg),
    )
    assert complete(reg, "c" * 32, device_id, b"other", 6, 3e9, 2.0, proof_hash="h2") is False
    assert orm_device(reg, device_id) == device
    assert challenge_row(reg, "c" * 32) == challenge == (1.0, "h1")
    assert audit_count(reg) == events
    assert open_transactions(reg) == 0


@pytest.mark.parametrize("change", ["disable", "revoke"])
def test_device_out_of_onboarding_leaves_its_challenge_unused(reg: Store, change: str) -> None:
    device_id = new_device(reg)
    (
        disable(reg, device_id)
        if change == "disable"
        else reg.devices.revoke(dev(reg, device_id), LOCAL)
    )
    device, events = orm_device(reg, device_id), audit_count(reg)
    assert complete(reg, "c" * 32, device_id, b"cert", 5, 2e9, 1.0, proof_hash="h") is False
    assert not recorded(reg, "c" * 32)  # not used
    assert orm_device(reg, device_id) == device
    assert audit_count(reg) == events
    assert open_transactions(reg) == 0


def test_unknown_device_consumes_nothing(reg: Store) -> None:
    device_id = new_device(reg)
    gone = dev(reg, device_id).model_copy(update={"device_id": "0" * 64})
    assert reg.challenges.complete("c" * 32, gone, b"\x01" * 32, 2**31, b"c", 5, 2e9, 1.0) is False
    assert not recorded(reg, "c" * 32)
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
        complete(reg, "c" * 32, device_id, b"cert", 5, 2e9, 1.0, proof_hash="h")
    monkeypatch.undo()
    assert not recorded(reg, "c" * 32)
    assert orm_device(reg, device_id) == device
    assert audit_count(reg) == events
    assert reg.db.checked_out == 0
    assert open_transactions(reg) == 0
    assert complete(reg, "c" * 32, device_id, b"cert", 5, 2e9, 1.0, proof_hash="h")


def test_a_challenge_used_again_is_refused_and_the_connection_goes_back(reg: Store) -> None:
    device_id = new_device(reg)
    assert complete(reg, "c" * 32, device_id, b"cert", 5, 2e9, 1.0, challenge=b"\x01" * 32)
    for _ in range(10):  # more than a pool keeps
        assert (
            complete(reg, "c" * 32, device_id, b"c2", 6, 2e9, 2.0, challenge=b"\x02" * 32) is False
        )
        assert reg.db.checked_out == 0
    assert open_transactions(reg) == 0
    assert orm_challenge(reg, "c" * 32).challenge == b"\x01" * 32
    assert dev(reg, device_id).cert_der == b"cert"


def test_used_challenges_are_purged_an_hour_past_their_expiry(reg: Store) -> None:
    d = new_device(reg)
    for cid, expires in (("old" + "0" * 29, 100), ("new" + "0" * 29, 300)):
        assert complete(reg, cid, d, b"der", 0x5B, 1.8e9, 50.0, expires=expires)
    reg.challenges._last_purge = -1e9  # the purge runs at most once a minute
    # A proof at 3,800.5 s drops what expired before 200.5 s.
    assert complete(reg, "c" * 32, d, b"der", 0x5B, 1.8e9, 3800.5, expires=4000)
    assert not recorded(reg, "old" + "0" * 29)
    assert recorded(reg, "new" + "0" * 29) and recorded(reg, "c" * 32)
    # Not again within the minute.
    assert complete(reg, "e" * 32, d, b"der", 0x5B, 1.8e9, 9999.0, expires=10_000)
    assert recorded(reg, "new" + "0" * 29)
    assert reg.challenges.purge(350) == 1
    assert not recorded(reg, "new" + "0" * 29)


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


def test_a_challenge_stored_by_an_older_hello_is_not_a_used_one(reg: Store) -> None:
    # Before hellos stored nothing, each hello inserted its challenge unused.
    d = new_device(reg)
    with reg.db.transaction() as tx:
        tx.execute(
            "INSERT INTO challenges (id, device_id, challenge, expires) VALUES (:id, :d, :c, :e)",
            {"id": "o" * 32, "d": d, "c": b"\x01" * 32, "e": 2**31 - 1},
        )
    assert reg.challenges.used("o" * 32) is None
    assert complete(reg, "c" * 32, d, b"der", 1, 2e9, 1.0)
    assert reg.challenges.used("c" * 32) is not None
