"""The onboarding hot path (registry.device, add_challenge, challenge_with_device,
complete_onboarding on the DBAPI cursor, host/server/hotsql.py) answers exactly as the ORM reads
the same rows, keeps its transactions whole and always gives its connection back to the pool;
on SQLite and, where its binaries are installed, on a private PostgreSQL."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Table, bindparam, create_engine, insert, select, text, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import psycopg
from sqlalchemy.exc import IntegrityError

from hil.serverproc import PrivatePostgres
from host.server.hotsql import HotSQLError, Statement
from host.server.models import AuditEvent, Challenge, Device
from host.server.registry import Actor, ChallengeInfo, DeviceInfo, Registry

TENANT = "acme"
_databases = itertools.count()


@pytest.fixture(params=["sqlite", "postgres"])
def reg(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Registry]:
    if request.param == "sqlite":
        r = Registry(tmp_path / "r.sqlite")
    else:
        pg: PrivatePostgres = request.getfixturevalue("postgres")
        r = Registry(pg.create_database(f"hot{next(_databases)}"))
    r.create_batch("b1", TENANT)
    yield r
    assert r.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    r.close()


def new_device(reg: Registry, batch: str = "b1") -> str:
    pub = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    device_id = hashlib.sha256(pub).hexdigest()
    reg.import_devices(batch, [f"{device_id},{pub.hex()}"])
    return device_id


def orm_device(reg: Registry, device_id: str) -> DeviceInfo:
    """The same device read through the ORM (registry.devices)."""
    return next(d for d in reg.devices() if d.device_id == device_id)


def orm_challenge(reg: Registry, cid: str) -> ChallengeInfo:
    with reg.transaction() as s:
        c = s.get(Challenge, cid)
        assert c is not None
        return ChallengeInfo(c.id, c.device_id, c.challenge, c.expires, c.used_at, c.proof_hash)


def assert_same(hot: Any, orm: Any) -> None:
    """Equal and of the same types field by field (1 == True: equality alone would not do)."""
    assert hot == orm
    for f in dataclasses.fields(hot):
        a, b = getattr(hot, f.name), getattr(orm, f.name)
        assert type(a) is type(b), (f.name, a, b)


def challenge_row(reg: Registry, cid: str) -> tuple[Any, ...]:
    with reg.transaction() as s:
        c = s.get(Challenge, cid)
        assert c is not None
        return (c.used_at, c.proof_hash)


def audit_count(reg: Registry) -> int:
    with reg.transaction() as s:
        return len(list(s.scalars(select(AuditEvent.id))))


def open_transactions(reg: Registry) -> int:
    """Transactions left open in the database by anyone (none may be, between calls)."""
    if reg.engine.dialect.name == "sqlite":
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
    engine = create_engine(reg.engine.url)
    try:
        with engine.connect() as conn:
            q = text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state LIKE 'idle in transaction%'"
            )
            return int(conn.execute(q).scalar_one())
    finally:
        engine.dispose()


def test_device_reads_as_the_orm_does(reg: Registry) -> None:
    plain = new_device(reg)
    busy = new_device(reg)
    revoked = new_device(reg)
    reg.add_challenge("r" * 32, revoked, b"\x03" * 32, 2**31 - 1)
    assert reg.complete_onboarding("r" * 32, revoked, b"der", 0x5A, 1.8e9, 999.0)
    reg.change_device(revoked, "revoke", lambda _d: None)
    reg.add_challenge("a" * 32, busy, b"\x02" * 32, 2**31 - 1)
    assert reg.complete_onboarding("a" * 32, busy, b"\x30\x82cert", 0xABC, 1.9e9, 1000.5)
    assert reg.record_telemetry(busy, {"temp": 21.5, "ok": True}, 1001.25, TENANT)
    reg.change_device(busy, "disable", lambda _d: None)  # disabled, with a policy exception
    reg.set_batch_active("b1", False)
    for device_id in (plain, busy, revoked):
        hot = reg.device(device_id)
        assert hot is not None
        assert_same(hot, orm_device(reg, device_id))
        assert_same(reg.device(device_id, tenant=TENANT), hot)
        assert reg.device(device_id, tenant="other") is None
    d = reg.device(busy)
    assert d is not None
    assert (d.disabled, d.policy_exception, d.batch_active) == (True, True, False)
    assert d.cert_der == b"\x30\x82cert" and d.last_telemetry == {"temp": 21.5, "ok": True}
    r = reg.device(revoked)
    assert r is not None and r.state == "revoked" and isinstance(r.revoked_at, float)
    assert reg.device("0" * 64) is None


def test_challenges_read_as_the_orm_does(reg: Registry) -> None:
    device_id = new_device(reg)
    reg.add_challenge("c" * 32, device_id, b"\x00\x01" * 16, 2**31 - 1)
    found = reg.challenge_with_device("c" * 32)
    assert found is not None
    ch, dev = found
    assert_same(ch, orm_challenge(reg, "c" * 32))
    assert_same(dev, orm_device(reg, device_id))
    assert (ch.challenge, ch.used_at, ch.proof_hash) == (b"\x00\x01" * 16, None, None)
    assert reg.complete_onboarding("c" * 32, device_id, b"cert", 5, 1.5e9, 77.25, "h" * 64)
    found = reg.challenge_with_device("c" * 32)
    assert found is not None
    assert_same(found[0], orm_challenge(reg, "c" * 32))
    assert (found[0].used_at, found[0].proof_hash) == (77.25, "h" * 64)
    assert_same(found[1], orm_device(reg, device_id))
    assert reg.challenge_with_device("d" * 32) is None


def test_onboarding_records_device_and_one_audit_event_per_new_serial(reg: Registry) -> None:
    device_id = new_device(reg)
    before = audit_count(reg)
    reg.add_challenge("1" * 32, device_id, b"\x01" * 32, 2**31 - 1)
    ok = reg.complete_onboarding("1" * 32, device_id, b"c1", 0x1F, 2e9, 10.0, actor=Actor("x", "y"))
    assert ok is True
    d = orm_device(reg, device_id)
    assert (d.state, d.cert_der, d.serial, d.not_after, d.onboarded_at) == (
        "onboarded",
        b"c1",
        "1f",
        2e9,
        10.0,
    )
    [event] = [a for a in reg.audit(TENANT) if a.action == "device.onboard"]
    assert (event.actor, event.source, event.target) == ("x", "y", f"device:{device_id}")
    assert event.detail == {"serial": "1f"}
    # The same serial again (a retry): the first onboarding time stays, nothing new is logged.
    reg.add_challenge("2" * 32, device_id, b"\x01" * 32, 2**31 - 1)
    assert reg.complete_onboarding("2" * 32, device_id, b"c2", 0x1F, 2e9, 20.0)
    d = orm_device(reg, device_id)
    assert (d.cert_der, d.onboarded_at) == (b"c2", 10.0)
    assert audit_count(reg) == before + 1


def test_policy_cleared_onboarding_clears_the_exception(reg: Registry) -> None:
    device_id = new_device(reg)
    reg.change_device(device_id, "disable", lambda _d: None)
    reg.change_device(device_id, "enable", lambda _d: None)
    with reg.engine.begin() as conn:  # as a crash between deny and enable would leave it
        conn.execute(update(Device).values(policy_exception=True))
    reg.add_challenge("1" * 32, device_id, b"\x01" * 32, 2**31 - 1)
    assert reg.complete_onboarding("1" * 32, device_id, b"c", 1, 2e9, 1.0)
    assert orm_device(reg, device_id).policy_exception is True
    reg.add_challenge("2" * 32, device_id, b"\x01" * 32, 2**31 - 1)
    assert reg.complete_onboarding("2" * 32, device_id, b"c", 1, 2e9, 2.0, policy_cleared=True)
    assert orm_device(reg, device_id).policy_exception is False


def test_used_challenge_changes_nothing(reg: Registry) -> None:
    device_id = new_device(reg)
    reg.add_challenge("c" * 32, device_id, b"\x01" * 32, 2**31 - 1)
    assert reg.complete_onboarding("c" * 32, device_id, b"first", 5, 2e9, 1.0, "h1")
    device, challenge, events = (
        orm_device(reg, device_id),
        challenge_row(reg, "c" * 32),
        audit_count(reg),
    )
    assert reg.complete_onboarding("c" * 32, device_id, b"other", 6, 3e9, 2.0, "h2") is False
    assert orm_device(reg, device_id) == device
    assert challenge_row(reg, "c" * 32) == challenge == (1.0, "h1")
    assert audit_count(reg) == events
    assert open_transactions(reg) == 0


@pytest.mark.parametrize("change", ["disable", "revoke"])
def test_device_out_of_onboarding_keeps_its_challenge(reg: Registry, change: str) -> None:
    device_id = new_device(reg)
    reg.add_challenge("c" * 32, device_id, b"\x01" * 32, 2**31 - 1)
    reg.change_device(device_id, change, lambda _d: None)
    device, events = orm_device(reg, device_id), audit_count(reg)
    assert reg.complete_onboarding("c" * 32, device_id, b"cert", 5, 2e9, 1.0, "h") is False
    assert challenge_row(reg, "c" * 32) == (None, None)  # not consumed
    assert orm_device(reg, device_id) == device
    assert audit_count(reg) == events
    assert open_transactions(reg) == 0


def test_unknown_device_consumes_nothing(reg: Registry) -> None:
    device_id = new_device(reg)
    reg.add_challenge("c" * 32, device_id, b"\x01" * 32, 2**31 - 1)
    assert reg.complete_onboarding("c" * 32, "0" * 64, b"cert", 5, 2e9, 1.0) is False
    assert challenge_row(reg, "c" * 32) == (None, None)


def test_failure_inside_onboarding_rolls_everything_back(
    reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    device_id = new_device(reg)
    reg.add_challenge("c" * 32, device_id, b"\x01" * 32, 2**31 - 1)
    device, events = orm_device(reg, device_id), audit_count(reg)
    # The audit insert, the last statement, fails in the database (audit.at is NOT NULL).
    monkeypatch.setattr(
        "host.server.registry.time", SimpleNamespace(time=lambda: None, monotonic=time.monotonic)
    )
    with pytest.raises(IntegrityError):
        reg.complete_onboarding("c" * 32, device_id, b"cert", 5, 2e9, 1.0, "h")
    monkeypatch.undo()
    assert challenge_row(reg, "c" * 32) == (None, None)
    assert orm_device(reg, device_id) == device
    assert audit_count(reg) == events
    assert reg.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert open_transactions(reg) == 0
    assert reg.complete_onboarding("c" * 32, device_id, b"cert", 5, 2e9, 1.0, "h")


def test_duplicate_challenge_raises_and_the_connection_goes_back(reg: Registry) -> None:
    device_id = new_device(reg)
    reg.add_challenge("c" * 32, device_id, b"\x01" * 32, 2**31 - 1)
    for _ in range(reg.engine.pool.size() + 2):  # type: ignore[attr-defined]
        with pytest.raises(IntegrityError):
            reg.add_challenge("c" * 32, device_id, b"\x02" * 32, 2**31 - 1)
        assert reg.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert open_transactions(reg) == 0
    assert orm_challenge(reg, "c" * 32).challenge == b"\x01" * 32
    with pytest.raises(IntegrityError):  # foreign keys are enforced (SQLite: the pragma)
        reg.add_challenge("d" * 32, "0" * 64, b"\x02" * 32, 2**31 - 1)
    reg.add_challenge("d" * 32, device_id, b"\x03" * 32, 2**31 - 1)
    assert reg.device(device_id) is not None
    assert reg.complete_onboarding("d" * 32, device_id, b"cert", 5, 2e9, 1.0)


def test_purge_drops_expired_challenges_only(reg: Registry) -> None:
    device_id = new_device(reg)
    reg.add_challenge("old" + "0" * 29, device_id, b"\x01" * 32, 100)
    reg.add_challenge("new" + "0" * 29, device_id, b"\x01" * 32, 300)
    reg.add_challenge("c" * 32, device_id, b"\x01" * 32, 400, purge_before=200.5)
    assert reg.challenge_with_device("old" + "0" * 29) is None
    assert reg.challenge_with_device("new" + "0" * 29) is not None
    assert reg.challenge_with_device("c" * 32) is not None


def test_sqlite_pool_connections_keep_their_pragmas(tmp_path: Path) -> None:
    """The hot path's connections come from the engine's pool, as db.py sets them up."""
    reg = Registry(tmp_path / "r.sqlite")
    raw = reg.engine.raw_connection()
    try:
        cur = raw.cursor()
        values = [
            cur.execute(f"PRAGMA {p}").fetchone()[0]
            for p in ("journal_mode", "busy_timeout", "foreign_keys", "synchronous")
        ]
    finally:
        raw.close()
        reg.close()
    assert values == ["wal", 10_000, 1, 1]  # synchronous 1: NORMAL


@pytest.mark.parametrize("dialect", [sqlite.dialect(), psycopg.dialect()])
def test_statements_needing_sqlalchemy_at_execution_are_refused(dialect: Any) -> None:
    table = cast(Table, Device.__table__)
    per_call_in = select(table).where(table.c.state.in_(bindparam("s", expanding=True)))
    with pytest.raises(HotSQLError):
        Statement(per_call_in, dialect)
    with pytest.raises(HotSQLError):  # audit.detail's default is computed by SQLAlchemy
        Statement(insert(AuditEvent), dialect, ("at", "actor"))
    constant_in = table.update().where(table.c.state.in_(("a", "b"))).values(serial=bindparam("s"))
    stmt = Statement(constant_in, dialect)
    assert "POSTCOMPILE" not in stmt.sql
    if dialect.paramstyle == "qmark":
        assert stmt.params({"s": "x"}) == ("x", "a", "b")
    else:
        assert stmt.params({"s": "x"}) == {"s": "x", "state_1_1": "a", "state_1_2": "b"}
