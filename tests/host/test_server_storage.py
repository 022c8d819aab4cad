"""Storage: Alembic migrations build exactly the schema of host/server/models.py, re-opening
is a no-op, and a database at another revision is named in the error."""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from host.server.db import HEAD, StorageError
from host.server.models import Base
from host.server.registry import Registry


def test_migrations_match_the_models(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.sqlite")
    with reg.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    reg.close()
    assert diff == []


def test_schema_is_at_head_and_reopen_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    Registry(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]
        before = db.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    Registry(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall() == before


def test_unknown_revision_is_an_actionable_error(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    Registry(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE alembic_version SET version_num = 'zzzz'")
    with pytest.raises(StorageError, match="cannot bring the database to schema"):
        Registry(path)


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    from hil.serverproc import PostgresUnavailable, PrivatePostgres

    try:
        pg = PrivatePostgres(Path(tempfile.mkdtemp(prefix="qlink-pg-"))).start()
    except PostgresUnavailable as e:
        pytest.skip(f"no PostgreSQL here ({e}); the SQLite tests cover the same code")
    yield pg.create_database("storage")
    pg.stop()


def test_postgres_migrates_and_matches_the_models(pg_url: str) -> None:
    reg = Registry(pg_url)
    with reg.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    reg.close()
    Registry(pg_url).close()  # a second open finds the schema at head


def test_postgres_import_and_onboarding_rules(pg_url: str) -> None:
    import hashlib

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from host.server.registry import ImportRejected

    reg = Registry(pg_url)
    reg.create_batch("b1", "acme")
    pubs = [
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        for _ in range(3)
    ]
    lines = [f"{hashlib.sha256(p).hexdigest()},{p.hex()}" for p in pubs]
    assert reg.import_devices("b1", lines) == 3
    with pytest.raises(ImportRejected):
        reg.import_devices("b1", [*lines, "bad"])
    device_id = lines[0].split(",")[0]
    reg.add_challenge("c" * 32, device_id, b"\x01" * 32, 2**31 - 1)
    assert reg.complete_onboarding("c" * 32, device_id, b"cert", 5, 1.0, 2.0)
    assert not reg.complete_onboarding("c" * 32, device_id, b"other", 6, 1.0, 3.0)
    d = reg.device(device_id)
    assert d is not None and (d.state, d.cert_der, d.serial) == ("onboarded", b"cert", "5")
    assert [a.action for a in reg.audit("acme")] == [
        "device.onboard",
        "batch.import",
        "batch.create",
    ]
    reg.close()
