"""The console on a real `qlink server` (real TLS, its managed broker), started once for the
whole tests/console run, and clients signed in as a user of any role and tenant.

    def test_x(console_as: ConsoleAs) -> None:
        c = console_as("operator")             # tenant acme; console_as("viewer", "globex")
        r = c.get("/console/batches")
        r = c.post_form("/console/batches", {"name": "b1"})   # carries the session's csrf

Users are made through the store with a cheap argon2 hasher and signed in by creating their
session directly (fast); test_auth.py signs in through the login form with the production
parameters.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The host tests' helpers (apiutil: the operator API in-process) serve these tests too.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "host"))

from consoleutil import TENANTS, Console, ConsoleAs, ConsoleClient

from hil.serverproc import ServerProcess


@pytest.fixture(scope="session")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    data: Path = tmp_path_factory.mktemp("qlink-console")
    proc = ServerProcess(data).start()
    try:
        for tenant in TENANTS:
            proc.ensure_tenant(tenant)
        c = Console(proc)
        yield c
        c.store.close()
    finally:
        status = proc.stop()
    assert status in (0, -15), proc.log_tail()


@pytest.fixture
def console_as(console: Console) -> Iterator[ConsoleAs]:
    """console_as(role, tenant="acme") -> a client signed in as a new user of that role."""
    made: list[ConsoleClient] = []

    def make(role: str, tenant: str = "acme") -> ConsoleClient:
        c = console.signed_in(console.user(role, tenant))
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
