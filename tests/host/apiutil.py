"""The server's ASGI app run in-process, as the host tests drive its APIs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio.from_thread
import httpx
from anyio.from_thread import BlockingPortal

from host.server.app import create_app
from host.server.policy import PolicyDriver
from host.server.settings import Settings

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
