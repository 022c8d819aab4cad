"""Fixtures shared by the host tests."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.serverproc import PostgresUnavailable, PrivatePostgres


@pytest.fixture(scope="session")
def postgres() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL for the registry tests that run on both databases; where it cannot
    start they are skipped (the SQLite runs cover the same code)."""
    try:
        pg = PrivatePostgres(Path(tempfile.mkdtemp(prefix="qlink-pg-"))).start()
    except PostgresUnavailable as e:
        pytest.skip(f"no PostgreSQL here ({e}); the SQLite tests cover the same code")
    yield pg
    pg.stop()
