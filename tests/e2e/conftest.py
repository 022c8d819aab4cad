"""A real `qlink server` (real TLS, real managed Mosquitto) for the end-to-end tests, started
once per session, and a pool of simulated devices registered in it through the CLI.

QLINK_E2E_DATABASE=postgres runs the same tests against a private PostgreSQL (started here from
the Debian binaries) with three uvicorn workers per server (`make test-pg`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hil.fleet import Fleet
from hil.serverproc import PostgresUnavailable, PrivatePostgres, ServerProcess, temporary_postgres

# The expiry test's own server: short enough to wait for, long enough for hello + proof.
# (The shared server keeps the default TTL: an emulated board's P-256 signing takes seconds.)
SHORT_TTL_S = 2
POOL = 12


BACKEND = os.environ.get("QLINK_E2E_DATABASE", "sqlite")
PG_WORKERS = 3


@pytest.fixture(scope="session")
def postgres() -> Iterator[PrivatePostgres | None]:
    if BACKEND != "postgres":
        yield None
        return
    with contextlib.ExitStack() as stack:
        try:
            pg = stack.enter_context(temporary_postgres())
        except PostgresUnavailable as e:
            pytest.fail(f"QLINK_E2E_DATABASE=postgres but PostgreSQL cannot start: {e}")
        yield pg


@pytest.fixture(scope="session")
def make_server(postgres: PrivatePostgres | None):  # type: ignore[no-untyped-def]
    """ServerProcess(data_dir, ...) on this run's database backend (a fresh database each)."""
    count = [0]

    def make(data_dir: Path, **kw: Any) -> ServerProcess:
        if postgres is not None:
            count[0] += 1
            kw.setdefault("database_url", postgres.create_database(f"e2e{os.getpid()}_{count[0]}"))
            kw.setdefault("workers", PG_WORKERS)
        return ServerProcess(data_dir, **kw)

    return make


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, make_server: Any) -> Iterator[ServerProcess]:
    data: Path = tmp_path_factory.mktemp("qlink-e2e")
    proc = make_server(data).start()
    yield proc
    status = proc.stop()
    # SIGTERM is handled: uvicorn shuts down, stops the broker, then re-raises the signal.
    assert status in (0, -15), proc.log_tail()


@pytest.fixture(scope="session")
def fleet(server: ServerProcess) -> Fleet:
    return Fleet(server, size=POOL)


@pytest.fixture(scope="module")
def short_ttl_fleet(tmp_path_factory: pytest.TempPathFactory, make_server: Any) -> Iterator[Fleet]:
    """A second server whose challenges live SHORT_TTL_S seconds, with two devices."""
    proc = make_server(tmp_path_factory.mktemp("qlink-ttl"), challenge_ttl=SHORT_TTL_S).start()
    yield Fleet(proc, size=2)
    assert proc.stop() in (0, -15), proc.log_tail()
