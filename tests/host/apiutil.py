"""The server's ASGI app run in-process, as the host tests drive its APIs."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import anyio.from_thread
import httpx
from anyio.from_thread import BlockingPortal

from host.server.app import create_app
from host.server.policy import PolicyDriver
from host.server.settings import Settings

if TYPE_CHECKING:
    from host.server.application import Application

CLIENT = ("203.0.113.7", 5555)  # the address the audit log records for these requests


@contextmanager
def in_process(
    settings: Settings, policy: PolicyDriver, **kw: Any
) -> Iterator[tuple[BlockingPortal, httpx.AsyncClient]]:
    """A portal to call the async client from sync tests, and a client of the started app
    (`kw` goes to create_app), until the block ends."""
    app = create_app(settings, policy=policy, **kw)
    transport = httpx.ASGITransport(app=app, client=CLIENT)
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(app.router.lifespan_context(app)),
    ):
        client = httpx.AsyncClient(transport=transport, base_url="https://localhost")
        try:
            yield portal, client
        finally:
            portal.call(client.aclose)


class OperatorApi:
    """The operator API in-process with a token per "tenant-role" in `roles` (tenants made as
    needed), and the test's own view of the application."""

    def __init__(
        self,
        portal: BlockingPortal,
        client: httpx.AsyncClient,
        app: Application,
        roles: Iterable[tuple[str, str]],
    ) -> None:
        self.portal, self.client, self.app = portal, client, app
        self.tokens: dict[str, str] = {}
        for tenant, role in roles:
            if not app.store.tenants.exists(tenant):
                app.create_tenant(tenant)
            self.tokens[f"{tenant}-{role}"] = app.create_token(f"{role}1", tenant, role)[0]

    def request(self, method: str, path: str, token: str, body: Any = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[token]}"}
        return self.portal.call(
            lambda: self.client.request(method, path, headers=headers, json=body)
        )


@contextmanager
def operator_api(settings: Settings, roles: Iterable[tuple[str, str]]) -> Iterator[OperatorApi]:
    """`OperatorApi` over a server with a recording policy driver, until the block ends."""
    from host.server.application import Application
    from host.server.policy import MemoryPolicy

    with in_process(settings, MemoryPolicy()) as (portal, client):
        api = OperatorApi(portal, client, Application.for_operator(settings), roles)
        try:
            yield api
        finally:
            api.app.close()
