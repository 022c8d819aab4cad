"""temporary_postgres: a throw-away PostgreSQL whose directory goes with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from hil.serverproc import PostgresUnavailable, PrivatePostgres, temporary_postgres


def test_the_cluster_directory_is_removed_after_use() -> None:
    try:
        with temporary_postgres() as pg:
            base = pg.base
            assert (base / "pgdata" / "PG_VERSION").is_file()
            assert pg.create_database("probe").endswith("/probe")
    except PostgresUnavailable as e:
        pytest.skip(f"no PostgreSQL here ({e})")
    assert not base.exists()


def test_a_start_that_fails_leaves_no_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[Path] = []

    def failing_start(self: PrivatePostgres) -> PrivatePostgres:
        started.append(self.base)
        (self.base / "pgdata").mkdir()  # initdb got this far
        raise PostgresUnavailable("pg_ctl failed: could not bind")

    monkeypatch.setattr(PrivatePostgres, "start", failing_start)
    with pytest.raises(PostgresUnavailable, match="could not bind"):
        with temporary_postgres():
            pytest.fail("the body must not run when the server did not start")
    assert len(started) == 1 and started[0].name.startswith("qlink-pg-")
    assert not started[0].exists()
