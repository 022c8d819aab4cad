"""Request limits as an ASGI middleware: a body larger than the limit gets 413 (at once when
Content-Length says so, else as soon as the stream passes it), and a client that does not send
its whole body within the time limit gets 408. Slow or huge requests cost one small buffer."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


class BodyTooSlow(HTTPException):
    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"the request body did not arrive within {seconds:g} s")


class RequestLimits:
    def __init__(
        self,
        app: App,
        *,
        max_body: int,
        max_device_body: int,
        device_prefix: str,
        body_timeout_s: float,
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.max_device_body = max_device_body
        self.device_prefix = device_prefix
        self.timeout = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        limit = self.max_device_body if path.startswith(self.device_prefix) else self.max_body
        refusal = declared_length_refusal(scope, limit)
        if refusal is not None:
            await reject(send, *refusal)
            return
        received = 0
        deadline: float | None = None
        done = False

        async def limited_receive() -> Message:
            nonlocal received, deadline, done
            if done:  # after the body only a disconnect can come: no time limit on waiting for it
                return await receive()
            if deadline is None:
                deadline = time.monotonic() + self.timeout
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise BodyTooSlow(self.timeout) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
                done = not message.get("more_body", False)
            return message

        await self.app(scope, limited_receive, send)


def declared_length_refusal(scope: Scope, limit: int) -> tuple[int, str, str] | None:
    """(status, code, detail) for a Content-Length that is not a number (400) or is over
    `limit` (413); None when the header is absent or fine."""
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            if not value.isdigit():
                return 400, "bad_request", "Content-Length is not a number"
            if int(value) > limit:
                return 413, "too_large", f"the body exceeds {limit} bytes"
    return None


async def send_json(
    send: Send, status: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    """A whole JSON answer in one body message."""
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
    await send(
        {"type": "http.response.start", "status": status, "headers": headers + (extra or [])}
    )
    await send({"type": "http.response.body", "body": data})


async def reject(send: Send, status: int, code: str, detail: str) -> None:
    """An error answer that also closes the connection (the rest of the body is not read)."""
    await send_json(send, status, {"error": code, "detail": detail}, [(b"connection", b"close")])
