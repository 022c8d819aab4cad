"""OTA (`/console/ota`): the published releases, the tenant's rollouts and creating one; a
rollout's page (`/console/ota/rollouts/ID`): its counts by device state, every device's
progress, and pause, resume and abort as its state allows. static/rollout.js keeps the page
current from `/console/live?rollout=ID`."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from host.server import roles
from host.server.application import Application
from host.server.console.web import (
    Back,
    Refusal,
    application,
    attempt,
    call,
    form_with_csrf,
    redirect,
    render,
    require_user,
)
from host.server.schemas import (
    OTA_STATES,
    ROLLOUT_ACTIVE,
    ROLLOUT_HALTED,
    ROLLOUT_PAUSED,
)

MAX_ID = 2**31 - 1


def ota_ctx(app: Application, tenant: str) -> dict[str, Any]:
    return {
        "releases": app.releases.releases(),
        "rollouts": app.rollouts.list(tenant),
        "batches": app.batches(tenant),
        "ota_states": OTA_STATES,
    }


async def ota(request: Request) -> Response:
    user = await require_user(request, roles.READ)
    ctx = await call(ota_ctx, application(request), user.tenant)
    return render(request, "ota.html", **ctx)


def _whole(form_value: object, what: str, default: int, low: int, high: int) -> int:
    text = str(form_value if form_value is not None else "").strip()
    if not text:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise Refusal(400, f"{what} must be a whole number from {low} to {high}, not {text[:20]!r}")
    return int(text)


async def create_rollout(request: Request) -> Response:
    user = await require_user(request, roles.ROLLOUT_CREATE)
    form = await form_with_csrf(request)
    try:
        percent = _whole(form.get("percent"), "percent", 100, 1, 100)
        max_failures = _whole(form.get("max_failures"), "max failures", 0, 0, MAX_ID)
    except Refusal as e:
        return redirect(request, "/console/ota", flash=e.sentence, kind="error")
    release = str(form.get("release") or "").strip()
    batch = str(form.get("batch") or "").strip()
    if not release or not batch:
        return redirect(
            request,
            "/console/ota",
            flash="choose a release and a batch; nothing changed",
            kind="error",
        )
    try:
        out = await attempt(
            request,
            "/console/ota",
            application(request).rollouts.create,
            release,
            batch,
            percent,
            max_failures,
            tenant=user.tenant,
            actor=user.actor,
        )
    except Back as back:
        return back.response
    return redirect(
        request,
        f"/console/ota/rollouts/{out.id}",
        flash=f"Rollout {out.id} of {out.release} to batch {out.batch} created ({out.state}).",
    )


def _rollout_id(request: Request) -> int:
    text = str(request.path_params["rollout_id"])
    if not text.isdigit() or len(text) > 10 or not 1 <= int(text) <= MAX_ID:
        raise Refusal(404, f"rollout {text[:20]} does not exist")
    return int(text)


async def rollout(request: Request) -> Response:
    user = await require_user(request, roles.READ)
    rid = _rollout_id(request)
    out = await call(application(request).rollouts.status, rid, user.tenant)
    return render(
        request,
        "rollout.html",
        rollout=out,
        ota_states=OTA_STATES,
        may_pause=out.state == ROLLOUT_ACTIVE,
        may_resume=out.state == ROLLOUT_PAUSED,
        may_abort=out.state in (ROLLOUT_ACTIVE, ROLLOUT_PAUSED, ROLLOUT_HALTED),
    )


async def _change(request: Request, action: str, verb: str) -> Response:
    user = await require_user(request, action)
    await form_with_csrf(request)
    rid = _rollout_id(request)
    service = application(request).rollouts
    fn = {"pause": service.pause, "resume": service.resume, "abort": service.abort}[verb]
    url = f"/console/ota/rollouts/{rid}"
    try:
        out = await attempt(request, url, fn, rid, user.tenant, user.actor)
    except Back as back:
        return back.response
    return redirect(request, url, flash=f"Rollout {out.id} is {out.state}.")


async def pause(request: Request) -> Response:
    return await _change(request, roles.ROLLOUT_PAUSE, "pause")


async def resume(request: Request) -> Response:
    return await _change(request, roles.ROLLOUT_RESUME, "resume")


async def abort(request: Request) -> Response:
    return await _change(request, roles.ROLLOUT_ABORT, "abort")


routes = [
    Route("/ota", ota, methods=["GET"]),
    Route("/ota/rollouts", create_rollout, methods=["POST"]),
    Route("/ota/rollouts/{rollout_id}", rollout, methods=["GET"]),
    Route("/ota/rollouts/{rollout_id}/pause", pause, methods=["POST"]),
    Route("/ota/rollouts/{rollout_id}/resume", resume, methods=["POST"]),
    Route("/ota/rollouts/{rollout_id}/abort", abort, methods=["POST"]),
]
