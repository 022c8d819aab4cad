"""What the console tests share: the server handle and signed-in clients (conftest.py makes
them as fixtures)."""

from __future__ import annotations

import itertools
import ssl
from collections.abc import Callable
from typing import Any

import httpx
from argon2 import PasswordHasher

from hil.serverproc import ServerProcess
from host.server.store import Actor, Store

TENANTS = ("acme", "globex")
PASSWORD = "correct horse battery staple"
# Fast for tests only; the production profile is tested in test_auth.py.
CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
_serial = itertools.count(1)


class ConsoleClient(httpx.Client):
    """An httpx client of the console signed in as `user` (name, tenant, role)."""

    name: str
    tenant: str
    role: str
    csrf: str

    def post_form(self, path: str, data: dict[str, Any] | None = None, **kw: Any) -> httpx.Response:
        """POST a form with the session's CSRF token (as the page's form would)."""
        return self.post(path, data={"csrf": self.csrf, **(data or {})}, **kw)


class Console:
    """The running server and what the tests do to its store."""

    def __init__(self, proc: ServerProcess) -> None:
        self.proc = proc
        self.url = proc.api_url
        self.root_pem = proc.root_pem_path
        self.store = Store(proc.data_dir / "registry.sqlite", migrate=False)
        self.tls = ssl.create_default_context(cafile=str(proc.root_pem_path))

    def client(self, **kw: Any) -> httpx.Client:
        """A client of the server that is signed in as nobody."""
        return httpx.Client(base_url=self.url, verify=self.tls, timeout=30, **kw)

    def user(self, role: str, tenant: str = "acme", name: str | None = None) -> str:
        """A new user (cheaply hashed password PASSWORD); its name."""
        name = name or f"{role}-{tenant}-{next(_serial)}"
        self.store.users.create(name, tenant, role, CHEAP.hash(PASSWORD), Actor("test", "local"))
        return name

    def signed_in(self, name: str) -> ConsoleClient:
        """A client with a new session of user `name`."""
        value, session = self.store.users.create_session(name, Actor(f"user:{name}", "test"))
        c = ConsoleClient(
            base_url=self.url,
            verify=self.tls,
            timeout=30,
            cookies={"qlink_session": value},
        )
        c.name, c.tenant, c.role = name, session.user.tenant, session.user.role
        c.csrf = session.csrf
        return c

    def sql(self, statement: str, params: dict[str, Any] | None = None) -> int:
        """Run one changing statement on the server's database (e.g. to age a session)."""
        return self.store.db.write_one(statement, params)


ConsoleAs = Callable[..., ConsoleClient]
