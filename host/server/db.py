"""The database: an engine for SQLite (WAL, the embedded default) or PostgreSQL, brought to the
newest schema with Alembic before use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Connection, Engine

from host.server import ServerError

_BUSY_TIMEOUT_MS = 10_000
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
HEAD = "0002"


class StorageError(ServerError):
    pass


def database_url(target: Path | str) -> str:
    """A path means SQLite in that file; a string with `://` is a SQLAlchemy URL."""
    if isinstance(target, str) and "://" in target:
        return target
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


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
