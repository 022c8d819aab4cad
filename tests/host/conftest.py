"""Fixtures shared by the host tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from hil.serverproc import PostgresUnavailable, PrivatePostgres, temporary_postgres


@pytest.fixture(scope="session")
def postgres() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL for the registry tests that run on both databases; where it cannot
    start they are skipped (the SQLite runs cover the same code)."""
    with contextlib.ExitStack() as stack:
        try:
            pg = stack.enter_context(temporary_postgres())
        except PostgresUnavailable as e:
            pytest.skip(f"no PostgreSQL here ({e}); the SQLite tests cover the same code")
        yield pg
