"""Tenants (`/console/tenants`): the list (the `default` tenant's admin sees every tenant, any
other user its own, as the operator API answers) and creating one (the platform operator's)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from host.server import roles
from host.server.console.web import (
    ConsoleUser,
    application,
    call,
    form_with_csrf,
    redirect,
    render,
    require_user,
)


def _visible(user: ConsoleUser) -> str | None:
    """The tenant whose row `user` sees; None: every tenant (the platform operator)."""
    return None if user.may(roles.TENANT_CREATE) else user.tenant


async def tenants(request: Request) -> Response:
    user = await require_user(request, roles.READ)
    rows = await call(application(request).tenants, _visible(user))
    return render(request, "tenants.html", tenants=rows)


async def create_tenant(request: Request) -> Response:
    user = await require_user(request, roles.TENANT_CREATE)
    form = await form_with_csrf(request)
    name = str(form.get("name") or "").strip()
    made = await call(application(request).create_tenant, name, user.actor)
    return redirect(request, "/console/tenants", flash=f"Tenant {made.name} created.")


routes = [
    Route("/tenants", tenants, methods=["GET"]),
    Route("/tenants", create_tenant, methods=["POST"]),
]
