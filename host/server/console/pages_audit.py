"""The audit log (`/console/audit`): the tenant's events newest first, filtered by action,
target (a prefix) and actor, in keyset pages of 50 (`?before=<id>`: the events older than the
last one shown)."""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from host.server import roles
from host.server.console.web import Refusal, application, call, render, require_user

PAGE = 50
_MAX_FILTER = 200  # characters of a filter (an audit target is at most 200)


def _filter(request: Request, name: str) -> str | None:
    value = request.query_params.get(name, "").strip()
    if len(value) > _MAX_FILTER:
        raise Refusal(400, f"the {name} filter is longer than {_MAX_FILTER} characters")
    return value or None


async def audit(request: Request) -> Response:
    user = await require_user(request, roles.READ)
    action = _filter(request, "action")
    target = _filter(request, "target")
    actor = _filter(request, "actor")
    raw_before = request.query_params.get("before", "").strip()
    if raw_before and (not raw_before.isdigit() or len(raw_before) > 18):
        raise Refusal(400, f"before must be an event number, not {raw_before[:20]!r}")
    before = int(raw_before) if raw_before else None
    app = application(request)
    # One row more than a page: whether an older page exists.
    rows = await call(
        app.audit_page,
        user.tenant,
        action=action,
        target_prefix=target,
        actor=actor,
        before=before,
        limit=PAGE + 1,
    )
    actions = await call(app.audit_actions, user.tenant)
    more = len(rows) > PAGE
    rows = rows[:PAGE]
    filters = {k: v for k, v in (("action", action), ("target", target), ("actor", actor)) if v}
    older = "/console/audit?" + urlencode({**filters, "before": rows[-1][0]}) if more else None
    newest = "/console/audit" + ("?" + urlencode(filters) if filters else "")
    return render(
        request,
        "audit.html",
        events=rows,
        actions=actions,
        action=action or "",
        target=target or "",
        actor=actor or "",
        older=older,
        newest=newest if before is not None else None,
    )


routes = [Route("/audit", audit, methods=["GET"])]
