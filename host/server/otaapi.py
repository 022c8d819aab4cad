"""The device API's OTA face (docs/ota.md "Device API"): GET /v1/ota/<release>/head?device=<id>
and GET /v1/ota/<release>/payload, answered straight from ASGI in front of the framework, as
deviceapi.py answers onboarding.

- head: the rollout service (host/server/rollouts.py) decides, off the event loop: 404
  `unknown_release`, 404 `not_offered`, 409 `no_ota_key`, else the head document (the device
  is then `downloading`).
- payload: `payload.bin` is the same for every device (useless without a wrapped key), so it is
  served like a static file: `Range: bytes=N-`, `bytes=N-M` or `bytes=-N` gets 206 with
  `Content-Range`, a range that starts past the end (or ends before it starts) 416 with
  `Content-Range: bytes */size`, no Range (or one that is not a single byte range, which RFC
  9110 section 14.2 lets a server ignore) 200 with the whole file.

Throughput (a device fleet downloading at once): a payload response touches the database once,
at its end, to count the bytes it sent (`bytes_served`: one UPDATE off the event loop); a
release's path and size are looked up once per process (a published release never changes).
The file is read with `os.pread` in 64 KiB pieces on the event loop: a read of a file this size
(at most ~1 MiB, in the page cache after its first download) takes microseconds, which is less
than a hand-off to a thread would cost. `send` waits while the client's TCP window is full, so
a slow device holds one chunk, not the file. A client that goes away stops the stream at the
next chunk and only what was sent is counted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from starlette.concurrency import run_in_threadpool

from host.server.deviceid import is_device_id
from host.server.limits import App, Receive, Scope, Send, send_json
from host.server.rollouts import OtaRefused
from host.server.store import DatabaseUnavailable, NotFound

if TYPE_CHECKING:
    from host.server.application import Application

log = logging.getLogger("qlink.ota")

PREFIX = "/v1/ota/"
CHUNK = 64 * 1024  # bytes per read and per body message
_RANGE = re.compile(rb"bytes=[ \t]*(\d{0,18})[ \t]*-[ \t]*(\d{0,18})[ \t]*\Z", re.IGNORECASE)
_KEPT = 256  # releases whose payload path and size a process remembers
# What a release ID can be (`<board>-<version>`, host/server/releases.py): anything else is
# unknown without asking the store.
_RELEASE_ID = re.compile(r"[A-Za-z0-9_.-]{1,80}\Z")
_HEADERS = [(b"content-type", b"application/octet-stream"), (b"accept-ranges", b"bytes")]


class Unsatisfiable(Exception):
    """A Range that selects no byte of the file (RFC 9110 section 15.5.17)."""


def byte_range(header: bytes | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte positions (inclusive) the Range header asks of a file of `size`
    bytes, None for the whole file (no header, or not one byte range: RFC 9110 section
    14.2 lets a server ignore it); Unsatisfiable when it selects nothing."""
    if header is None:
        return None
    m = _RANGE.match(header.strip())
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if not first and not last:
        return None  # "bytes=-": not a range
    if not first:  # a suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - n), size - 1
    start = int(first)
    end = size - 1 if not last else min(int(last), size - 1)
    if start >= size or (last and int(last) < start):
        raise Unsatisfiable
    return start, end


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return bytes(v)
    return None


def _device_param(scope: Scope) -> str | None:
    try:
        query = parse_qs(bytes(scope.get("query_string", b"")).decode("ascii"))
    except UnicodeDecodeError:
        return None
    values = query.get("device", [])
    if len(values) != 1 or not is_device_id(values[0]):
        return None
    return values[0].lower()


async def _refuse(send: Send, status: int, code: str, detail: str, **headers: bytes) -> None:
    extra = [(k.replace("_", "-").encode(), v) for k, v in headers.items()]
    await send_json(send, status, {"error": code, "detail": detail}, extra)


class _Sent:
    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


class OtaApi:
    """ASGI middleware serving /v1/ota/<release>/head and /payload itself (see the module's
    docstring); every other path goes on to the framework."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._payloads: dict[str, tuple[str, int]] = {}  # release ID -> (path, size)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "") if scope["type"] == "http" else ""
        release, _, leaf = path[len(PREFIX) :].partition("/")
        if not path.startswith(PREFIX) or not release or leaf not in ("head", "payload"):
            await self.app(scope, receive, send)
            return
        if scope["method"] != "GET":
            await _refuse(send, 405, "method_not_allowed", "Method Not Allowed", allow=b"GET")
            return
        if not _RELEASE_ID.match(release):
            await _refuse(
                send, 404, "unknown_release", f"release {release[:80]!r} is not published"
            )
            return
        application: Application = scope["app"].state.application
        try:
            if leaf == "head":
                await self._head(application, scope, release, send)
            else:
                await self._payload(application, scope, release, receive, send)
        except DatabaseUnavailable as e:  # before any byte of an answer went out
            await _refuse(send, 503, "unavailable", f"{e}; retry", retry_after=b"5")

    async def _head(self, application: Application, scope: Scope, release: str, send: Send) -> None:
        rid = secrets.token_hex(4)
        device = _device_param(scope)
        if device is None:
            await _refuse(
                send, 400, "bad_request", "name the device once: ?device=<its 64-hex device ID>"
            )
            return
        try:
            doc = await run_in_threadpool(application.rollouts.head, release, device)
        except OtaRefused as e:
            log.info(
                "event=ota_head request=%s device=%s release=%s outcome=%s status=%d",
                rid,
                device,
                release[:80],
                e.code,
                e.status,
            )
            await _refuse(send, e.status, e.code, e.detail)
            return
        log.info(
            "event=ota_head request=%s device=%s release=%s outcome=ok status=200",
            rid,
            device,
            release[:80],
        )
        await send_json(send, 200, doc)

    async def _where(self, application: Application, release: str) -> tuple[str, int] | None:
        """The release's payload path and size: asked of the store once per process."""
        kept = self._payloads.get(release)
        if kept is not None:
            return kept
        try:
            path: Path = await run_in_threadpool(application.releases.payload_path, release)
            size = os.stat(path).st_size
        except (NotFound, OSError):
            return None
        if len(self._payloads) >= _KEPT:
            self._payloads.clear()
        kept = self._payloads[release] = (str(path), size)
        return kept

    async def _payload(
        self, application: Application, scope: Scope, release: str, receive: Receive, send: Send
    ) -> None:
        found = await self._where(application, release)
        if found is None:
            await _refuse(send, 404, "unknown_release", f"release {release[:80]} is not published")
            return
        path, size = found
        try:
            wanted = byte_range(_header(scope, b"range"), size)
        except Unsatisfiable:
            await _refuse(
                send,
                416,
                "range_not_satisfiable",
                f"the payload is {size} bytes; ask for a range that starts inside it",
                content_range=b"bytes */%d" % size,
            )
            return
        headers = list(_HEADERS)
        if wanted is None:
            status, first, length = 200, 0, size
        else:
            status, first, length = 206, wanted[0], wanted[1] - wanted[0] + 1
            headers.append((b"content-range", b"bytes %d-%d/%d" % (wanted[0], wanted[1], size)))
        headers.append((b"content-length", b"%d" % length))
        sent = _Sent()
        try:
            await self._stream(path, first, length, status, headers, receive, send, sent)
        except BaseException:
            # Cancelled (the server stops) or the file failed mid-way: count what went without
            # waiting for it here.
            if sent.n:
                loop = asyncio.get_running_loop()
                loop.run_in_executor(None, _count, application, release, sent.n)
            raise
        if sent.n:
            await run_in_threadpool(_count, application, release, sent.n)
        log.debug(
            "event=ota_payload release=%s status=%d first=%d bytes=%d of=%d",
            release[:80],
            status,
            first,
            sent.n,
            length,
        )

    @staticmethod
    async def _stream(
        path: str,
        first: int,
        length: int,
        status: int,
        headers: list[tuple[bytes, bytes]],
        receive: Receive,
        send: Send,
        sent: _Sent,
    ) -> None:
        fd = os.open(path, os.O_RDONLY)
        gone = asyncio.Event()

        async def watch() -> None:  # the client going away ends the stream at the next chunk
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.ensure_future(watch())
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            pos, left = first, length
            while left > 0:
                chunk = os.pread(fd, min(CHUNK, left), pos)
                if not chunk:  # the file shrank: it is never rewritten, so this is damage
                    raise OSError(f"{path} ends before byte {pos}")
                pos += len(chunk)
                left -= len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": left > 0})
                if gone.is_set():
                    return
                sent.n += len(chunk)
            if length == 0:
                await send({"type": "http.response.body", "body": b""})
        finally:
            watcher.cancel()
            os.close(fd)


def _count(application: Application, release: str, n: int) -> None:
    try:
        application.releases.add_bytes_served(release, n)
    except Exception:  # a count lost is not worth a failed download
        log.exception("event=ota_bytes_not_counted release=%s bytes=%d", release[:80], n)


def openapi_paths() -> tuple[dict[str, Any], dict[str, Any]]:
    """The OTA device routes for the OpenAPI schema: (paths, component schemas)."""
    from pydantic.json_schema import models_json_schema

    from host.server.schemas import ErrorBody, OtaHeadAnswer

    ref = "#/components/schemas/{model}"
    refs, defs = models_json_schema(
        [(ErrorBody, "validation"), (OtaHeadAnswer, "validation")], ref_template=ref
    )

    def body(model: type[Any]) -> dict[str, Any]:
        return {"application/json": {"schema": refs[(model, "validation")]}}

    def refused(*codes: int) -> dict[str, Any]:
        return {str(c): {"description": "Refused", "content": body(ErrorBody)} for c in codes}

    release = {
        "name": "release",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "The release ID, <board>-<version>",
    }
    octets = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    paths = {
        f"{PREFIX}{{release}}/head": {
            "get": {
                "summary": "The manifest, its signature and the content key wrapped for a "
                "device with an open offer of the release",
                "operationId": "device_ota_head",
                "tags": ["device"],
                "parameters": [
                    release,
                    {
                        "name": "device",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
                    },
                ],
                "responses": {
                    "200": {"description": "Successful Response", "content": body(OtaHeadAnswer)},
                    **refused(400, 404, 405, 409, 503),
                },
            }
        },
        f"{PREFIX}{{release}}/payload": {
            "get": {
                "summary": "The release's encrypted payload, whole or a byte range (resume)",
                "operationId": "device_ota_payload",
                "tags": ["device"],
                "parameters": [
                    release,
                    {
                        "name": "Range",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "bytes=N-, bytes=N-M or bytes=-N",
                    },
                ],
                "responses": {
                    "200": {"description": "The whole payload", "content": octets},
                    "206": {"description": "The range asked for", "content": octets},
                    **refused(404, 405, 416, 503),
                },
            }
        },
    }
    return paths, defs.get("$defs", {})
