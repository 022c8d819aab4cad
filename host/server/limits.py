"""Request limits as an ASGI middleware: a body larger than the limit gets 413 (at once when
Content-Length says so, else as soon as the stream passes it), and a client that does not send
its whole body within the time limit gets 408. Slow or huge requests cost one small buffer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
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
        self.limit = limit


def too_large_sentence(limit: int) -> str:
    """What a page (not an API answer) says about a body over `limit` bytes."""
    return (
        f"The request is larger than this server takes: at most {limit / 2**20:g} MiB."
        " Nothing was changed; send less at once (split a large import into several files)."
    )


class BodyTooSlow(HTTPException):
    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"the request body did not arrive within {seconds:g} s")


class LimitedReceive:
    """The one request-body reader: `receive` wrapped so that the body may not pass `limit`
    bytes (BodyTooLarge) nor take longer than `timeout_s` from its first message (BodyTooSlow).
    The framework's routes get it as their `receive`; the device API reads with `read()`."""

    __slots__ = ("_deadline", "_done", "_receive", "limit", "received", "timeout")

    def __init__(self, receive: Receive, limit: int, timeout_s: float) -> None:
        self._receive = receive
        self.limit = limit
        self.timeout = timeout_s
        self.received = 0
        self._deadline: float | None = None
        self._done = False

    async def __call__(self) -> Message:
        if self._done:  # after the body only a disconnect can come: no time limit on waiting
            return await self._receive()
        loop = asyncio.get_running_loop()
        if self._deadline is None:
            self._deadline = loop.time() + self.timeout
        try:
            async with asyncio.timeout_at(self._deadline):
                message = await self._receive()
        except TimeoutError:
            raise BodyTooSlow(self.timeout) from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                raise BodyTooLarge(self.limit)
            self._done = not message.get("more_body", False)
        return message

    async def read(self) -> bytes | None:
        """The whole body, or None when the client disconnected first."""
        chunks: list[bytes] = []
        while True:
            message = await self()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            if self._done:
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class RequestLimits:
    """The limits for the framework's routes (the operator API, the CA files, the console):
    413 at once when Content-Length is over the limit, else as soon as the stream passes it;
    408 when the body does not arrive in time. The answer is JSON, except under a path prefix
    of `pages` (e.g. "/console"), whose app answers a declared length over the limit with its
    own page (it must not read the body; a body that passes the limit while streaming raises
    BodyTooLarge in that app's routes instead)."""

    def __init__(
        self,
        app: App,
        *,
        max_body: int,
        body_timeout_s: float,
        pages: Mapping[str, App] | None = None,
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.timeout = body_timeout_s
        self.pages = dict(pages or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = declared_length_refusal(scope, self.max_body)
        if refusal is not None:
            page = self._page(scope["path"]) if refusal[0] == 413 else None
            if page is not None:
                await page(scope, receive, send)
            else:
                await reject(send, *refusal)
            return
        await self.app(scope, LimitedReceive(receive, self.max_body, self.timeout), send)

    def _page(self, path: str) -> App | None:
        for prefix, page in self.pages.items():
            if path == prefix or path.startswith(prefix + "/"):
                return page
        return None


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
