"""A few Core statements run straight on a pooled DBAPI cursor: the onboarding hot path's.

A profile of the onboarding server under load put ~33 % of its CPU in SQLAlchemy Core and
sqlite3, and about half of that in SQLAlchemy's per-statement machinery (cache keys, compiled
cache lookups, construct_params, execution contexts, result wrappers, the pool's reset
rollback) rather than in the database. The statements each onboarding runs are compiled here
once per engine from their Core constructs, so models.py stays the one definition of the
schema; only their execution skips SQLAlchemy. Errors still surface as SQLAlchemy's exceptions
(an IntegrityError is sqlalchemy.exc.IntegrityError, as from a Connection).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.engine.interfaces import DBAPICursor, DBAPIModule
from sqlalchemy.exc import CompileError, DBAPIError
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql import ClauseElement, Select
from sqlalchemy.sql.compiler import SQLCompiler

__all__ = ["HotSQLError", "Statement", "Transaction", "transaction"]


class HotSQLError(CompileError):
    """A statement that does not compile to plain SQL with bound parameters only."""


class Statement:
    """One Core statement compiled for one dialect: its SQL and how to bind a dict of values in
    the dialect's paramstyle (positional `qmark` for sqlite3, named `pyformat` for psycopg)."""

    __slots__ = ("_fixed", "_order", "_procs", "columns", "sql")

    def __init__(
        self, stmt: ClauseElement, dialect: Dialect, column_keys: Sequence[str] | None = None
    ) -> None:
        # column_keys: an INSERT's columns; without them it would name every column.
        compiled = stmt.compile(dialect=dialect, column_keys=list(column_keys or ()) or None)
        if not isinstance(compiled, SQLCompiler):
            raise HotSQLError(f"not a SQL statement: {stmt}")
        required = {name for bp, name in compiled.bind_names.items() if bp.required}
        if (
            compiled.literal_execute_params
            or compiled.insert_prefetch
            or compiled.update_prefetch
            or compiled.escaped_bind_names
            or any(bp.callable is not None for bp in compiled.bind_names)
            or any(bp.expanding and bp.required for bp in compiled.bind_names)
        ):
            # Each needs SQLAlchemy's execution step: values rendered into the SQL, Python-side
            # column defaults, quoted parameter names, values or IN lists computed per call.
            raise HotSQLError(f"needs SQLAlchemy's execution step: {compiled.string}")
        # What that step does with an IN list of constants (`__[POSTCOMPILE_x]`), done once.
        expanded = compiled.construct_expanded_state(dict.fromkeys(required))
        types = {name: bp.type for bp, name in compiled.bind_names.items()}
        for name, names in expanded.parameter_expansion.items():
            types.update(dict.fromkeys(names, types[name]))
        procs: dict[str, Callable[[Any], Any]] = {}
        for name, type_ in types.items():
            proc = type_.dialect_impl(dialect).bind_processor(dialect)
            if proc is not None:
                procs[name] = proc
        self.sql: str = expanded.statement
        self._order: tuple[str, ...] | None = (
            tuple(expanded.positiontup) if compiled.positional and expanded.positiontup else None
        )
        if compiled.positional and self._order is None and expanded.parameters:
            raise HotSQLError(f"no parameter order for {self.sql}")
        self._fixed: dict[str, Any] = {
            name: procs[name](value) if name in procs else value
            for name, value in expanded.parameters.items()
            if name not in required
        }
        self._procs = tuple((n, p) for n, p in procs.items() if n in required)
        self.columns: tuple[str, ...] = (
            tuple(stmt.selected_columns.keys()) if isinstance(stmt, Select) else ()
        )
        if len(set(self.columns)) != len(self.columns):
            raise HotSQLError(f"result columns need distinct names: {self.columns}")

    def params(self, values: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        """The DBAPI parameters for `values` (every parameter the statement does not fix)."""
        bound = {**self._fixed, **values}
        for name, proc in self._procs:
            bound[name] = proc(bound[name])
        if self._order is None:
            return bound
        return tuple(bound[name] for name in self._order)


class Transaction:
    """Statements on one pooled DBAPI connection, in one transaction (see `transaction`)."""

    __slots__ = ("_cursor", "_dialect", "_error", "_raw", "done")

    def __init__(self, raw: PoolProxiedConnection, dialect: Dialect) -> None:
        self._raw = raw
        self._dialect = dialect
        self._error: type[DBAPIModule.Error] = dialect.loaded_dbapi.Error
        self._cursor: DBAPICursor = raw.cursor()
        self.done = False

    def execute(self, stmt: Statement, values: Mapping[str, Any]) -> int:
        """Run `stmt`; the number of rows it matched (for an UPDATE or DELETE)."""
        self._run(stmt, values)
        return int(self._cursor.rowcount)

    def first(self, stmt: Statement, values: Mapping[str, Any]) -> dict[str, Any] | None:
        """The first row of a SELECT by its column names, or None."""
        self._run(stmt, values)
        row = self._cursor.fetchone()
        return None if row is None else dict(zip(stmt.columns, row, strict=True))

    def rollback(self) -> None:
        """Undo everything so far; the transaction is over (nothing is committed at the end)."""
        self._end(self._raw.rollback)

    def _run(self, stmt: Statement, values: Mapping[str, Any]) -> None:
        params = stmt.params(values)
        try:
            self._cursor.execute(stmt.sql, params)
        except self._error as e:
            raise self._wrap(e, stmt.sql, params) from e

    def _commit(self) -> None:
        self._end(self._raw.commit)

    def _end(self, finish: Callable[[], None]) -> None:
        self.done = True
        try:
            finish()
        except self._error as e:
            raise self._wrap(e, None, None) from e

    def _abort(self) -> None:
        """After an exception: roll back if the connection still can, or drop it, and never
        let this hide the exception being raised."""
        self.done = True
        if not self._raw.is_valid:
            return
        try:
            self._raw.rollback()
        except self._error as e:
            self._raw.invalidate(e)

    def _close(self) -> None:
        try:
            if self._raw.is_valid:
                self._cursor.close()
        finally:
            self._raw.close()  # back to the pool

    def _wrap(self, e: DBAPIModule.Error, sql: str | None, params: Any) -> BaseException:
        """As a Connection would: SQLAlchemy's exception for it, the connection dropped from the
        pool when the database is gone."""
        gone = self._dialect.is_disconnect(e, self._raw.dbapi_connection, self._cursor)
        if gone:
            self._raw.invalidate(e)
        return DBAPIError.instance(
            sql,
            params,
            e,
            self._error,
            connection_invalidated=gone,
            dialect=self._dialect,
        )


@contextmanager
def transaction(engine: Engine) -> Iterator[Transaction]:
    """A transaction on a connection from `engine`'s pool: committed when the block ends (unless
    it rolled back), rolled back when it raises; the connection is back in the pool either way.

    On SQLite the transaction begins with the first INSERT/UPDATE/DELETE (sqlite3's implicit
    BEGIN, as under SQLAlchemy): a block that only reads holds no transaction at all.
    """
    dialect = engine.dialect
    try:
        raw = engine.raw_connection()
    except dialect.loaded_dbapi.Error as e:
        gone = dialect.is_disconnect(e, None, None)
        raise DBAPIError.instance(
            None, None, e, dialect.loaded_dbapi.Error, connection_invalidated=gone, dialect=dialect
        ) from e
    try:
        tx = Transaction(raw, dialect)
    except BaseException:
        raw.close()
        raise
    try:
        yield tx
        if not tx.done:
            tx._commit()
    except BaseException:
        tx._abort()
        raise
    finally:
        tx._close()
