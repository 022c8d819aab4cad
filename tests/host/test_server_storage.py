"""Storage: Alembic migrations build exactly the schema of host/server/models.py, re-opening
is a no-op, and a database at another revision is named in the error."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from hil.serverproc import PrivatePostgres
from host.server.db import HEAD, StorageError, make_engine
from host.server.models import Base
from host.server.store import NotFound, Store


def test_migrations_match_the_models(tmp_path: Path) -> None:
    reg = Store(tmp_path / "r.sqlite")
    engine = make_engine(reg.db.url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    reg.close()
    assert diff == []


def test_schema_is_at_head_and_reopen_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    Store(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]
        before = db.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    Store(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall() == before


def test_unknown_revision_is_an_actionable_error(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE alembic_version SET version_num = 'zzzz'")
    with pytest.raises(StorageError, match="cannot bring the database to schema"):
        Store(path)


@pytest.fixture(scope="module")
def pg_url(postgres: PrivatePostgres) -> str:
    return postgres.create_database("storage")


def test_postgres_migrates_and_matches_the_models(pg_url: str) -> None:
    reg = Store(pg_url)
    engine = make_engine(reg.db.url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    engine.dispose()
    reg.close()
    Store(pg_url).close()  # a second open finds the schema at head


def test_postgres_import_and_onboarding_rules(pg_url: str) -> None:
    import hashlib

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from host.server.store import ImportRejected

    reg = Store(pg_url)
    reg.tenants.create("acme")
    reg.batches.create("b1", "acme")
    pubs = [
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        for _ in range(3)
    ]
    lines = [f"{hashlib.sha256(p).hexdigest()},{p.hex()}" for p in pubs]
    assert reg.batches.import_devices("b1", lines) == 3
    with pytest.raises(ImportRejected):
        reg.batches.import_devices("b1", [*lines, "bad"])
    device_id = lines[0].split(",")[0]
    dev = reg.devices.get(device_id)
    assert dev is not None
    assert reg.challenges.complete(2**56, dev, b"cert", 5, 1.0, 2.0, proof_hash="h1")
    assert not reg.challenges.complete(2**56, dev, b"other", 6, 1.0, 3.0, proof_hash="h2")
    d = reg.devices.get(device_id)
    assert d is not None and (d.state, d.cert_der, d.serial) == ("onboarded", b"cert", "5")
    assert [a.action for a in reg.audit.list("acme")] == [
        "device.onboard",
        "batch.import",
        "batch.create",
        "tenant.create",
    ]
    reg.close()


def _sqlite_at(path: Path, revision: str, *, down: bool = False) -> Path:
    """The SQLite database at `path` (new or not) upgraded, or `down`graded, to `revision`."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine

    from host.server.db import MIGRATIONS

    engine = create_engine(f"sqlite:///{path}")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)
    engine.dispose()
    return path


# Batch 1, made by an older server.
_OLD_BATCH = (
    "INSERT INTO batches (id, name, tenant, active, policy, created_at)"
    " VALUES (1, 'old', 'default', 1, 'mosquitto', 0)"
)


def test_upgrade_from_0001_marks_existing_devices_for_a_broker_clear(tmp_path: Path) -> None:
    """Devices made by a server before 0002 may have entries at the broker that the server of
    the time left there: each is asked to be cleared at its next onboarding; new ones are not."""
    path = _sqlite_at(tmp_path / "r.sqlite", "0001")
    with sqlite3.connect(path) as db:
        db.execute(_OLD_BATCH)
        db.execute(
            "INSERT INTO devices (device_id, public_key, batch_id, state, disabled) "
            "VALUES (?, ?, 1, 'onboarded', 0)",
            ("a" * 64, b"\x04" + b"\x01" * 64),
        )
    reg = Store(path)
    try:
        old = reg.devices.get("a" * 64)
        assert old is not None and old.policy_exception
        assert old.state == "onboarded" and not old.disabled  # nothing else changed
        reg.batches.create("new")
        key = ec.generate_private_key(ec.SECP256R1()).public_key()
        pub = key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        reg.batches.import_devices("new", [f"{hashlib.sha256(pub).hexdigest()},{pub.hex()}"])
        fresh = reg.devices.get(hashlib.sha256(pub).hexdigest())
        assert fresh is not None and not fresh.policy_exception
    finally:
        reg.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]


def test_upgrade_from_0002_keeps_every_tenant_that_batches_or_tokens_name(tmp_path: Path) -> None:
    """Tenants were only strings before 0003: each one a batch or an operator token names
    becomes a record (with `default`), so nothing made then is refused now."""
    path = _sqlite_at(tmp_path / "r.sqlite", "0002")
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO batches (name, tenant, active, policy, created_at)"
            " VALUES (?, ?, 1, 'mosquitto', 0)",
            [("b1", "acme"), ("b2", "acme"), ("b3", "old corp")],  # a name from before the rule
        )
        db.execute(
            "INSERT INTO operators (name, tenant, role, token_hash, created_at, created_by)"
            " VALUES ('alice', 'globex', 'admin', ?, 0, 'cli')",
            ("0" * 64,),
        )
    reg = Store(path)
    try:
        assert [(t.name, t.batches) for t in reg.tenants.list()] == [
            ("acme", 2),
            ("default", 0),
            ("globex", 0),
            ("old corp", 1),
        ]
        assert reg.batches.create("b4", "acme").tenant == "acme"
        assert reg.tokens.create("bob", "globex", "viewer")[1].tenant == "globex"
        with pytest.raises(NotFound, match="qlink tenant create initech"):
            reg.batches.create("b5", "initech")
    finally:
        reg.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT DISTINCT created_by FROM tenants").fetchall() == [("migration",)]


def test_upgrade_from_0008_moves_used_challenges_onto_the_device_row(tmp_path: Path) -> None:
    """The challenges table goes (its IDs do not open any more: their layout changed), each
    device gets an empty used-challenge record, and the indexes of the columns only onboarded
    devices have leave out the NULLs; downgrading brings the table and full indexes back."""
    path = _sqlite_at(tmp_path / "r.sqlite", "0008")
    with sqlite3.connect(path) as db:
        db.execute(_OLD_BATCH)
        db.execute(
            "INSERT INTO devices (device_id, public_key, batch_id, state, disabled, not_after,"
            " onboarded_at) VALUES (?, ?, 1, 'onboarded', 0, 2e9, 1e9)",
            ("a" * 64, b"\x04" + b"\x01" * 64),
        )
        db.execute(
            "INSERT INTO challenges (id, device_id, challenge, expires, used_at, proof_hash)"
            " VALUES (?, ?, ?, 2000000000, 1.0, ?)",
            ("c" * 32, "a" * 64, b"\x01" * 32, "h" * 64),
        )
    reg = Store(path)
    try:
        dev = reg.devices.get("a" * 64)
        assert dev is not None and (dev.used_challenge, dev.used_proof) == (None, None)
        assert (dev.state, dev.not_after, dev.onboarded_at) == ("onboarded", 2e9, 1e9)
    finally:
        reg.close()

    def schema() -> dict[str, str]:
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL")
            return {name: sql for name, sql in rows}

    after = schema()
    assert "challenges" not in after and "ix_challenges_expires" not in after
    for column in ("not_after", "onboarded_at"):
        assert after[f"ix_devices_{column}"].endswith(f"WHERE {column} IS NOT NULL")
    _sqlite_at(path, "0008", down=True)
    back = schema()
    assert "challenges" in back and "WHERE" not in back["ix_devices_not_after"]
    assert "used_challenge" not in back["devices"]
