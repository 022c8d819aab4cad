"""The database under the store: SQLite (WAL, the embedded default) or PostgreSQL, reached
through the DBAPI (PEP 249) with SQL that the store's modules own.

Why not SQLAlchemy here: a profile of the onboarding server put a sixth of its CPU in
SQLAlchemy's per-statement machinery, and importing it costs a `qlink` command more than the
rest of the command. SQLAlchemy and Alembic keep the schema (host/server/models.py) and its
migrations (host/server/db.py); they are imported only when the schema has to move.

SQL is written once with named parameters (`:name`) and portable syntax (SQLite >= 3.35 and
PostgreSQL both take `RETURNING`, `TRUE`/`FALSE`, `LIMIT .. OFFSET`); for psycopg the
parameters become `%(name)s` once per statement. Connections run in autocommit mode and a
transaction is an explicit `BEGIN`: a write transaction on SQLite is `BEGIN IMMEDIATE`, so it
holds the write lock from its first statement and never has to upgrade a read snapshot that
another process's commit made stale.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from host.server.store.errors import (
    ConstraintViolation,
    DatabaseUnavailable,
    DuplicateKey,
    StoreError,
)

SCHEMA_HEAD = "0009"  # the newest migration (host/server/migrations/versions)
_BUSY_TIMEOUT_MS = 10_000
_IDLE_KEPT = 8  # idle connections a pool keeps; more are closed when given back
_PING_AFTER_S = 30.0  # a PostgreSQL connection idle this long is checked before use
_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")

Row = dict[str, Any]


if TYPE_CHECKING:  # what the store uses of a DBAPI connection and cursor (PEP 249)

    class _Cursor(Protocol):
        description: Sequence[Sequence[Any]] | None
        rowcount: int

        def execute(self, sql: str, params: Any = ..., /) -> Any: ...
        def executemany(self, sql: str, params: Any, /) -> Any: ...
        def fetchone(self) -> Sequence[Any] | None: ...
        def fetchall(self) -> Sequence[Sequence[Any]]: ...
        def close(self) -> Any: ...

    class _Connection(Protocol):
        def cursor(self) -> Any: ...
        def close(self) -> Any: ...


def database_url(target: Path | str) -> str:
    """A path means SQLite in that file; a string with `://` is a database URL."""
    if isinstance(target, str) and "://" in target:
        return target
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


class Tx:
    """Statements on one connection inside one transaction (see `Database.transaction`)."""

    __slots__ = ("_cursor", "_db")

    def __init__(self, db: Database, cursor: _Cursor) -> None:
        self._db = db
        self._cursor = cursor

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        """Run one statement; the number of rows it changed (UPDATE, DELETE, INSERT)."""
        self._run(sql, params)
        return int(self._cursor.rowcount)

    def executemany(self, sql: str, rows: Sequence[Mapping[str, Any]]) -> None:
        try:
            self._cursor.executemany(self._db.sql(sql), rows)
        except self._db.dbapi_errors as e:
            raise self._db.translate(e) from e

    def one(self, sql: str, params: Mapping[str, Any] | None = None) -> Row | None:
        """The first row by column name, or None."""
        self._run(sql, params)
        rows = _rows(self._cursor, self._cursor.fetchone())
        return rows[0] if rows else None

    def all(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        self._run(sql, params)
        return _rows(self._cursor, *self._cursor.fetchall())

    def _run(self, sql: str, params: Mapping[str, Any] | None) -> None:
        try:
            self._cursor.execute(self._db.sql(sql), params or {})
        except self._db.dbapi_errors as e:
            raise self._db.translate(e) from e


def _rows(cursor: _Cursor, *rows: Sequence[Any] | None) -> list[Row]:
    """`rows` of the cursor's last statement by column name (a None row is no row)."""
    names = [d[0] for d in cursor.description or ()]
    return [dict(zip(names, row, strict=True)) for row in rows if row is not None]


class _Rollback(Exception):
    """Raised by `Tx`-using code through `Database.rollback()` to end a transaction quietly."""


class Database:
    """A pool of DBAPI connections to one database, brought to the newest schema on open."""

    def __init__(self, target: Path | str, *, migrate: bool = True) -> None:
        self.url = database_url(target)
        self.path: Path | None = None
        if self.url.startswith("sqlite:///"):
            self.dialect = "sqlite"
            self.path = Path(self.url.removeprefix("sqlite:///"))
            self.dbapi_errors: tuple[type[Exception], ...] = (sqlite3.Error,)
            self._integrity: type[Exception] = sqlite3.IntegrityError
            self._unique: tuple[type[Exception], ...] = ()
            self._gone: tuple[type[Exception], ...] = ()
        elif self.url.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
            import psycopg
            import psycopg.errors

            self.dialect = "postgresql"
            self.dbapi_errors = (psycopg.Error,)
            self._integrity = psycopg.IntegrityError
            self._unique = (psycopg.errors.UniqueViolation,)
            self._gone = (psycopg.OperationalError, psycopg.InterfaceError)
        else:
            raise StoreError(
                f"unsupported database URL {self.url.split('://')[0]}://...; "
                "use a file path (SQLite) or postgresql://user@host/db"
            )
        self._sql_cache: dict[str, str] = {}
        self._idle: list[tuple[_Connection, float]] = []
        self._lock = threading.Lock()
        self._closed = False
        self.checked_out = 0  # connections in use right now (tests check none leak)
        if migrate:
            self.ensure_schema()

    # -- SQL ------------------------------------------------------------------------------
    def sql(self, text: str) -> str:
        """`text` in this driver's parameter style (named `:x` stays for sqlite3)."""
        if self.dialect == "sqlite":
            return text
        done = self._sql_cache.get(text)
        if done is None:
            done = _NAMED.sub(r"%(\1)s", text.replace("%", "%%"))
            self._sql_cache[text] = done
        return done

    def translate(self, e: Exception) -> Exception:
        """The store's exception for a DBAPI error (the original is its __cause__)."""
        if isinstance(e, self._integrity):
            # sqlite3 has one IntegrityError for every constraint; its message names the kind.
            if isinstance(e, self._unique) or str(e).startswith("UNIQUE constraint failed"):
                return DuplicateKey(f"a unique key is already taken ({type(e).__name__})")
            return ConstraintViolation(f"a constraint of the schema refused it ({e})")
        if isinstance(e, self._gone):
            return DatabaseUnavailable(
                f"the database connection failed ({type(e).__name__}); retry"
            )
        if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
            return DatabaseUnavailable("the database stayed locked by another writer; retry")
        return StoreError(f"the database refused a statement ({type(e).__name__}: {e})")

    # -- connections ----------------------------------------------------------------------
    def _connect(self) -> _Connection:
        try:
            if self.dialect == "sqlite":
                assert self.path is not None
                conn = sqlite3.connect(
                    self.path,
                    isolation_level=None,  # autocommit: transactions are explicit BEGINs
                    check_same_thread=False,  # a pooled connection serves one thread at a time
                    timeout=_BUSY_TIMEOUT_MS / 1000,
                )
                for pragma in (
                    "journal_mode=WAL",
                    f"busy_timeout={_BUSY_TIMEOUT_MS}",
                    "foreign_keys=ON",
                    "synchronous=NORMAL",
                ):
                    conn.execute(f"PRAGMA {pragma}")
                return conn
            import psycopg

            url = self.url.replace("postgresql+psycopg://", "postgresql://", 1)
            return psycopg.connect(url, autocommit=True)
        except self.dbapi_errors as e:
            raise DatabaseUnavailable(
                f"cannot open the database ({type(e).__name__}: {e}); check the path or URL"
            ) from e

    def _checkout(self, *, fresh: bool = False) -> tuple[_Connection, bool]:
        """A connection and whether it was pooled (`fresh`: a new one whatever the pool has)."""
        now = time.monotonic()
        while True:
            with self._lock:
                if self._closed:
                    raise StoreError("the store is closed")
                conn, since = self._idle.pop() if self._idle and not fresh else (None, now)
                self.checked_out += 1
            if conn is None:
                try:
                    return self._connect(), False
                except BaseException:
                    with self._lock:
                        self.checked_out -= 1
                    raise
            if self.dialect == "sqlite" or now - since < _PING_AFTER_S or self._alive(conn):
                return conn, True
            self._discard(conn)  # a server restart killed it: take another

    def _drop_idle(self) -> None:
        """Close every pooled connection (after one turned out dead, the others likely are)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _since in idle:
            try:
                conn.close()
            except self.dbapi_errors:
                pass

    def _first(self, statement: str, params: Mapping[str, Any] | None) -> tuple[_Connection, Any]:
        """A connection and a cursor that has run `statement`. A pooled connection that the
        database dropped (a restart, an idle timeout) fails here before anything ran, so the
        statement is tried once more on a new connection."""
        for attempt in (1, 2):
            conn, pooled = self._checkout(fresh=attempt == 2)
            cur = None
            try:
                cur = conn.cursor()
                cur.execute(self.sql(statement), params or {})
                return conn, cur
            except self.dbapi_errors as e:
                gone = isinstance(e, self._gone)
                if gone:
                    self._discard(conn)
                else:  # the statement's fault: the connection still serves
                    if cur is not None:
                        cur.close()
                    self._checkin(conn)
                if gone and pooled and attempt == 1:
                    self._drop_idle()
                    continue
                raise self.translate(e) from e
            except BaseException:
                self._discard(conn)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _alive(self, conn: _Connection) -> bool:
        try:
            cur = conn.cursor()
            cur.execute("SELECT 1")
            cur.close()
            return True
        except self.dbapi_errors:
            return False

    def _checkin(self, conn: _Connection) -> None:
        with self._lock:
            self.checked_out -= 1
            if not self._closed and len(self._idle) < _IDLE_KEPT:
                self._idle.append((conn, time.monotonic()))
                return
        conn.close()

    def _discard(self, conn: _Connection) -> None:
        with self._lock:
            self.checked_out -= 1
        try:
            conn.close()
        except self.dbapi_errors:
            pass

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Tx]:
        """One transaction: committed when the block ends, rolled back when it raises (or
        calls `rollback()`); the connection goes back to the pool either way, or is closed
        if the database dropped it."""
        conn, cur = self._first(
            "BEGIN IMMEDIATE" if write and self.dialect == "sqlite" else "BEGIN", None
        )
        began = True
        try:
            try:
                yield Tx(self, cur)
            except _Rollback:
                cur.execute("ROLLBACK")
                began = False
            else:
                try:
                    cur.execute("COMMIT")
                except self.dbapi_errors as e:
                    raise self.translate(e) from e
                began = False
        except BaseException as e:
            if not self._settle(conn, cur, began, e):
                conn = None  # type: ignore[assignment]
            raise
        finally:
            if conn is not None:
                cur.close()
                self._checkin(conn)

    def _settle(self, conn: _Connection, cur: Any, began: bool, e: BaseException) -> bool:
        """After an exception: roll back if the connection still works, else drop it.
        True when the connection may go back to the pool."""
        cause = e.__cause__ if isinstance(e, StoreError) else e
        if isinstance(cause, self._gone) or isinstance(e, DatabaseUnavailable):
            self._discard(conn)
            return False
        if began:
            try:
                cur.execute("ROLLBACK")
            except self.dbapi_errors:
                self._discard(conn)
                return False
        return True

    @staticmethod
    def rollback() -> NoReturn:
        """End the current transaction without committing anything (inside `transaction`)."""
        raise _Rollback

    def one(self, sql: str, params: Mapping[str, Any] | None = None) -> Row | None:
        """One statement that reads, outside any explicit transaction (it is atomic alone)."""
        rows = self._read(sql, params, many=False)
        return rows[0] if rows else None

    def write_one(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        """One statement that writes, as its own transaction (autocommit: no BEGIN/COMMIT
        round of its own); the rows it changed."""
        conn, cur = self._first(sql, params)
        n = int(cur.rowcount)
        cur.close()
        self._checkin(conn)
        return n

    def all(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        """Every row of one statement that reads (atomic alone, as `one`)."""
        return self._read(sql, params, many=True)

    def _read(self, sql: str, params: Mapping[str, Any] | None, *, many: bool) -> list[Row]:
        conn, cur = self._first(sql, params)
        try:
            rows = _rows(cur, *cur.fetchall()) if many else _rows(cur, cur.fetchone())
            cur.close()
        except BaseException:
            self._discard(conn)
            raise
        self._checkin(conn)
        return rows

    # -- schema ---------------------------------------------------------------------------
    def schema_version(self) -> str | None:
        """The migration the database is at, None for an empty database."""
        table = (
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
            if self.dialect == "sqlite"
            else "SELECT 1 FROM information_schema.tables WHERE table_name = 'alembic_version'"
        )
        if self.one(table) is None:
            return None
        row = self.one("SELECT version_num FROM alembic_version")
        return None if row is None else str(row["version_num"])

    def ensure_schema(self) -> None:
        """Bring the schema to SCHEMA_HEAD (a no-op costing two small reads when it is there;
        Alembic is loaded only when there is something to do)."""
        if self.schema_version() == SCHEMA_HEAD:
            return
        from host.server.db import migrate_url

        migrate_url(self.url)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn, _since in idle:
            conn.close()
