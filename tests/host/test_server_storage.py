"""Storage: Alembic migrations build exactly the schema of host/server/models.py, re-opening
is a no-op, and a database at another revision is named in the error."""

from __future__ import annotations

import sqlite3
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
