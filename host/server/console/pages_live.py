"""`GET /console/live` (docs/console.md "Live updates"): a signed-in user's stream of the
process's live feed (host/server/console/live.py), the dashboard's and the device list's, one
device's or one rollout's.

Why an idle stream costs nothing: it waits on its queue (and a keepalive timer of 15 s), not on
a clock. Its client's leaving is the ASGI `http.disconnect`: Starlette's StreamingResponse
awaits it beside the stream and cancels the stream (ASGI spec below 2.4, which uvicorn speaks);
from 2.4 on Starlette leaves that to a failed write, so the stream awaits `receive()` itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from host.server import roles
from host.server.console.live import (
    HEADERS,
    RETRY_MS,
    Listener,
    LiveFeed,
    LiveRequestInvalid,
    feed_of,
)
from host.server.console.web import Refusal, application, call, require_user
from host.server.deviceid import BadDeviceId, parse_device_id

if TYPE_CHECKING:
    from host.server.application import Application


async def live_endpoint(
    request: Request,
    feed: LiveFeed,
    tenant: str | None,
    device: str | None = None,
    rollout: int | None = None,
) -> StreamingResponse:
    """`GET /console/live`: the stream of `feed`'s events for `tenant` (None: every tenant),
    one device's or one rollout's, or the fleet's (the dashboard and the device list)."""
    listener = feed.subscribe(tenant, device, rollout)
    return StreamingResponse(
        _stream(request, feed, listener),
        media_type="text/event-stream",
        headers=HEADERS,
    )


def _spec_version(request: Request) -> tuple[int, ...]:
    version = str(request.scope.get("asgi", {}).get("spec_version", "2.0"))
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (2, 0)


async def _watch_disconnect(request: Request, feed: LiveFeed, listener: Listener) -> None:
    """End the stream when its client leaves (ASGI 2.4 and later: Starlette does not look)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    feed.unsubscribe(listener)
    listener.end()


async def _stream(request: Request, feed: LiveFeed, listener: Listener) -> AsyncIterator[bytes]:
    """The frames of one listener until its client goes or the feed drops it."""
    watcher = None
    if _spec_version(request) >= (2, 4):
        watcher = asyncio.get_running_loop().create_task(
            _watch_disconnect(request, feed, listener), name="console-live-disconnect"
        )
    try:
        yield f"retry: {RETRY_MS}\n\n".encode()
        while True:
            try:
                async with asyncio.timeout(feed.keepalive_s):
                    item = await listener.queue.get()
            except TimeoutError:
                yield b": keepalive\n\n"
                continue
            chunk = [item]
            while not listener.queue.empty():  # send what is waiting in one write
                chunk.append(listener.queue.get_nowait())
            listener.taken(chunk)
            frames = b"".join(c for c in chunk if c is not None)
            if frames:
                yield frames
            if None in chunk:
                return
    finally:
        if watcher is not None:
            watcher.cancel()
        feed.unsubscribe(listener)


def application_feed(app: Application) -> LiveFeed:
    """The feed over the application's reads (host/server/store/views.py)."""
    return LiveFeed(
        app.changes_since,
        app.rollout_changes_since,
        app.store.views.summaries,
        rollout_status=app.rollouts.status,
    )


def live_query(device: str | None, rollout: str | None) -> tuple[str | None, int | None]:
    """The `device` and `rollout` of a `/console/live` query, checked."""
    if device is not None and rollout is not None:
        raise LiveRequestInvalid("ask for one device or one rollout, not both")
    if device is not None:
        try:
            device = parse_device_id(device, "device")
        except BadDeviceId as e:
            raise LiveRequestInvalid(str(e)) from None
    if rollout is None:
        return device, None
    if not rollout.isdigit() or not 0 < int(rollout) < 2**63:
        raise LiveRequestInvalid(f"rollout must be a rollout number, not {rollout[:20]!r}")
    return None, int(rollout)


async def console_live(request: Request) -> Response:
    """`GET /console/live[?device=ID|?rollout=ID]` for a signed-in user: its tenant's events;
    another tenant's device or rollout answers 404, as if it did not exist."""
    user = await require_user(request, roles.READ)
    try:
        device, rollout = live_query(
            request.query_params.get("device"), request.query_params.get("rollout")
        )
    except LiveRequestInvalid as e:
        raise Refusal(400, str(e)) from None
    app = application(request)
    if device is not None:
        await call(app.require_device, device, user.tenant)
    if rollout is not None:
        await call(app.rollouts.status, rollout, user.tenant)
    feed = feed_of(request.app.state, lambda: application_feed(app))
    return await live_endpoint(request, feed, user.tenant, device, rollout)


routes = [Route("/live", console_live, methods=["GET"])]
