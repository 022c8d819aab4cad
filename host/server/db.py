"""The schema's migrations: an SQLAlchemy engine for SQLite (WAL) or PostgreSQL and Alembic's
upgrade to the newest schema. Only this module and the migrations import SQLAlchemy; the store
(host/server/store) runs its own SQL on the DBAPI and calls `migrate_url` when the schema is
behind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Connection, Engine

from host.server.store.database import SCHEMA_HEAD as HEAD
from host.server.store.database import database_url
from host.server.store.errors import StoreError

_BUSY_TIMEOUT_MS = 10_000
MIGRATIONS = Path(__file__).resolve().parent / "migrations"

__all__ = ["HEAD", "MIGRATIONS", "StorageError", "database_url", "make_engine", "migrate"]


class StorageError(StoreError):
    """The schema cannot be brought to HEAD."""


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def migrate_url(url: str) -> None:
    """Upgrade the database at `url` to HEAD with a short-lived engine."""
    engine = make_engine(url)
    try:
        migrate(engine)
    finally:
        engine.dispose()


def _current(conn: Connection) -> str | None:
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def migrate(engine: Engine) -> None:
    """Upgrade the schema to HEAD (a no-op costing one query when it is there already)."""
    with engine.connect() as conn:
        if _current(conn) == HEAD:
            return
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                # Several workers may start at once: one migrates, the others wait for it.
                conn.execute(text("SELECT pg_advisory_xact_lock(7152)"))
                if _current(conn) == HEAD:
                    return
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except Exception as e:
        raise StorageError(
            f"cannot bring the database to schema {HEAD} ({type(e).__name__}: {e}); "
            "check the database URL and that nothing else uses an older qlink on it"
        ) from e


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()
