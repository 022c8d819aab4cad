"""Batches (`/console/batches`): the list with device counts and target, creating one, and a
batch's page: its devices by state, importing identities (CSV, JSON, JSON Lines: every bad row
named, nothing stored if one is bad), moving it to another target, activating or deactivating
it, and revoking it (after a confirmation step).

Importing: the form posts the file (`multipart/form-data`). Without script the answer is the
result page. static/import.js sends the same form with fetch and `Accept:
application/x-ndjson`; the answer then streams one JSON line per progress step
(`{"done": n, "total": m}`) and a last line with the result (`{"result": {"imported": n}}`)
or the refusal (`{"error": sentence, "rows": [{"line", "reason"}...]}`). The largest file is
the server's request body limit (settings.max_body_bytes, enforced by host/server/limits.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from host.server import roles
from host.server.application import Application
from host.server.console.web import (
    Back,
    ConsoleUser,
    Refusal,
    application,
    attempt,
    call,
    form_with_csrf,
    redirect,
    render,
    require_user,
)
from host.server.identities import FORMATS, ImportFormatError
from host.server.schemas import STATES
from host.server.store import ImportRejected

NDJSON = "application/x-ndjson"
# What a file's name says about its format; any other name: detected from the content.
_SUFFIXES = {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def _url(name: str) -> str:
    from urllib.parse import quote

    return "/console/batches/" + quote(name, safe="")


def batch_ctx(app: Application, name: str, tenant: str) -> dict[str, Any]:
    batch = app.batch(name, tenant)
    states = app.batch_counts(tenant, batch.name)
    return {
        "batch": batch,
        "by_state": [(s, states.get(s, 0)) for s in STATES],
        "move": app.move_status(batch.name, tenant),
        "targets": app.list_targets(),
    }


# -- the list ------------------------------------------------------------------------------
async def batches(request: Request) -> Response:
    user = await require_user(request, roles.READ)
    app = application(request)
    rows = await call(app.batches, user.tenant)
    targets = await call(app.list_targets)
    return render(request, "batches.html", batches=rows, targets=targets)


async def create_batch(request: Request) -> Response:
    user = await require_user(request, roles.BATCH_CREATE)
    form = await form_with_csrf(request)
    name = str(form.get("name") or "").strip()
    target = str(form.get("target") or "").strip() or None
    try:
        made = await attempt(
            request,
            "/console/batches",
            application(request).create_batch,
            name,
            user.tenant,
            None,
            user.actor,
            target=target,
        )
    except Back as back:
        return back.response
    return redirect(request, _url(made.name), flash=f"Batch {made.name} created.")


# -- one batch -----------------------------------------------------------------------------
async def batch_page(request: Request) -> Response:
    user = await require_user(request, roles.READ)
    name = request.path_params["name"]
    ctx = await call(batch_ctx, application(request), name, user.tenant)
    limit = application(request).settings.max_body_bytes
    return render(request, "batch.html", max_upload=limit, formats=FORMATS, **ctx)


async def set_state(request: Request) -> Response:
    user = await require_user(request, roles.BATCH_STATE)
    form = await form_with_csrf(request)
    name = request.path_params["name"]
    active = form.get("active") == "true"
    try:
        b = await attempt(
            request,
            _url(name),
            application(request).set_batch_active,
            name,
            active,
            user.tenant,
            user.actor,
        )
    except Back as back:
        return back.response
    word = "activated" if b.active else "deactivated"
    return redirect(request, _url(b.name), flash=f"Batch {b.name} {word}.")


async def move(request: Request) -> Response:
    user = await require_user(request, roles.BATCH_MOVE)
    form = await form_with_csrf(request)
    name = request.path_params["name"]
    to = str(form.get("to") or "").strip()
    app = application(request)
    if to not in {t.name for t in await call(app.list_targets)}:
        await call(app.batch, name, user.tenant)  # another tenant's batch: 404 first
        sentence = f"there is no target {to[:64]!r}; choose one of the list (qlink target list)"
        return redirect(request, _url(name), flash=sentence, kind="error")
    try:
        out = await attempt(
            request,
            _url(name),
            app.move_batch,
            name,
            to,
            tenant=user.tenant,
            actor=user.actor,
        )
    except Back as back:
        return back.response
    return redirect(
        request,
        _url(out.batch),
        flash=f"Batch {out.batch} is moving to {out.target}: {out.registered} registered, "
        f"{out.commanded} commanded, {out.moved} moved, {out.fell_back} fell back "
        f"of {out.devices}.",
    )


async def revoke(request: Request) -> Response:
    """Without `confirm=yes` the confirmation page (nothing changes); with it, the revocation."""
    user = await require_user(request, roles.BATCH_REVOKE)
    form = await form_with_csrf(request)
    name = request.path_params["name"]
    app = application(request)
    if form.get("confirm") != "yes":
        batch = await call(app.batch, name, user.tenant)
        return render(request, "batch_revoke.html", batch=batch)
    out = await call(app.revoke_batch, name, tenant=user.tenant, actor=user.actor)
    return redirect(
        request,
        _url(out.batch),
        flash=f"Batch {out.batch} revoked: {out.revoked} devices now, {out.already_revoked} "
        f"were revoked before, of {out.devices}.",
    )


# -- import --------------------------------------------------------------------------------
async def _read_upload(request: Request) -> tuple[str, str | None, str]:
    """(text, format or None, file name) of the form's `file`; Refusal with a sentence for
    a missing, empty or not UTF-8 file."""
    form = await form_with_csrf(request)
    upload = form.get("file")
    if not isinstance(upload, UploadFile) or not upload.filename:
        raise Refusal(400, "choose a file to import (CSV, JSON or JSON Lines); nothing imported")
    data = await upload.read()
    filename = upload.filename
    if not data.strip():
        raise Refusal(400, f"the file {filename} is empty; nothing imported")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Refusal(
            400, f"the file {filename} is not UTF-8 text (byte {e.start}); nothing imported"
        ) from None
    fmt = str(form.get("format") or "")
    if fmt and fmt not in FORMATS:
        raise Refusal(400, f"unknown format {fmt[:20]!r}; use one of {', '.join(FORMATS)}")
    if not fmt:
        suffix = "." + filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
        fmt = _SUFFIXES.get(suffix, "")
    return text, fmt or None, filename


async def import_file(request: Request) -> Response:
    user = await require_user(request, roles.BATCH_IMPORT)
    name = request.path_params["name"]
    app = application(request)
    streamed = NDJSON in request.headers.get("accept", "")
    batch = await call(app.batch, name, user.tenant)  # another tenant's: 404 before any work
    try:
        text, fmt, filename = await _read_upload(request)
    except Refusal as e:
        if e.status != 400:
            raise
        if streamed:
            return _ndjson_once({"error": e.sentence, "rows": []}, 400)
        return _result(request, batch.name, None, e.sentence, [], 400)
    run = _Import(app, batch.name, user, text, fmt)
    if streamed:
        return StreamingResponse(run.stream(), media_type=NDJSON)
    outcome = await run.result()
    if "error" in outcome:
        return _result(request, batch.name, filename, outcome["error"], outcome["rows"], 400)
    imported = outcome["result"]["imported"]
    return _result(request, batch.name, filename, None, [], 200, imported=imported)


def _ndjson_once(doc: dict[str, Any], status: int) -> Response:
    return Response(json.dumps(doc) + "\n", status_code=status, media_type=NDJSON)


def _result(
    request: Request,
    batch: str,
    filename: str | None,
    error: str | None,
    rows: list[dict[str, Any]],
    status: int,
    imported: int | None = None,
) -> Response:
    return render(
        request,
        "import_result.html",
        status=status,
        batch_name=batch,
        batch_url=_url(batch),
        filename=filename,
        error=error,
        rows=rows,
        imported=imported,
    )


class _Import:
    """One import run in a worker thread; its progress handed to the event loop."""

    def __init__(
        self, app: Application, batch: str, user: ConsoleUser, text: str, fmt: str | None
    ) -> None:
        self.app, self.batch, self.user, self.text, self.fmt = app, batch, user, text, fmt

    def _run(self, progress: Callable[[int, int], None] | None) -> dict[str, Any]:
        try:
            n = self.app.import_devices(
                self.batch,
                self.text,
                tenant=self.user.tenant,
                fmt=self.fmt,
                actor=self.user.actor,
                progress=progress,
            )
        except ImportRejected as e:
            rows = [{"line": r.line, "reason": r.reason} for r in e.errors]
            return {"error": f"{len(rows)} bad row(s); nothing imported", "rows": rows}
        except ImportFormatError as e:
            return {"error": f"{e}; nothing imported", "rows": []}
        return {"result": {"imported": n, "batch": self.batch}}

    async def result(self) -> dict[str, Any]:
        try:
            return await call(self._run, None)
        except Refusal as e:
            return {"error": e.sentence, "rows": []}

    async def stream(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def progress(done: int, total: int) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, {"done": done, "total": total})

        async def work() -> None:
            try:
                outcome = await run_in_threadpool(self._run, progress)
            except Exception as e:
                outcome = {"error": _sentence(e), "rows": []}
            await queue.put(outcome)

        task = asyncio.create_task(work())
        try:
            while True:
                doc = await queue.get()
                yield (json.dumps(doc) + "\n").encode()
                if "done" not in doc:
                    return
        finally:
            if not task.done():
                await task


def _sentence(e: Exception) -> str:
    from host.server.store import NotFound

    if isinstance(e, NotFound):
        return str(e)
    return f"the import failed ({type(e).__name__}: {e}); nothing imported"


routes = [
    Route("/batches", batches, methods=["GET"]),
    Route("/batches", create_batch, methods=["POST"]),
    Route("/batches/{name}", batch_page, methods=["GET"]),
    Route("/batches/{name}/import", import_file, methods=["POST"]),
    Route("/batches/{name}/state", set_state, methods=["POST"]),
    Route("/batches/{name}/move", move, methods=["POST"]),
    Route("/batches/{name}/revoke", revoke, methods=["POST"]),
]
