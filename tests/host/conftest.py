"""Fixtures shared by the host tests."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.serverproc import PostgresUnavailable, PrivatePostgres, temporary_postgres


@pytest.fixture(scope="session")
def postgres() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL for the store tests that run on both databases; where it cannot
    start they are skipped (the SQLite runs cover the same code)."""
    with contextlib.ExitStack() as stack:
        try:
            pg = stack.enter_context(temporary_postgres())
        except PostgresUnavailable as e:
            pytest.skip(f"no PostgreSQL here ({e}); the SQLite tests cover the same code")
        yield pg


_databases = itertools.count()


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """What a store opens, once for each database: a new SQLite file, or a new database of the
    private PostgreSQL."""
    if request.param == "sqlite":
        return tmp_path / "r.sqlite"
    pg: PrivatePostgres = request.getfixturevalue("postgres")
    return pg.create_database(f"t{next(_databases)}")
