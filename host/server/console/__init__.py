"""The web console (docs/console.md): server-rendered pages under `/console/`.

How a page is written (every page module follows these conventions):

- A page module is `host/server/console/pages_<topic>.py`. It exposes
  `routes: list[starlette.routing.Route]` (paths relative to `/console`, e.g. `Route("/batches",
  batches, methods=["GET"])`) and is listed once in `PAGE_MODULES` below; nothing else changes.
- Every route is also one line in `host/server/roles.py` `CONSOLE_ROUTES` (method, path → action);
  tests/console/test_roles.py fails for a route that is missing there.
- An endpoint is `async def page(request: Request) -> Response`. It starts with
  `user = await require_user(request, roles.SOME_ACTION)` (or a role name: "viewer",
  "operator", "admin"); without a session that answers a redirect to `/console/login`, with a
  role too low the 403 page (both raised as `Refusal`, answered by the console itself).
- A POST endpoint reads its form with `form = await form_with_csrf(request)` (after
  `require_user`): the parsed form, or the 403 refusal when the `csrf` field (or the
  `X-CSRF-Token` header) is missing or wrong or the `Origin` names another site. Nothing may
  change before that call returns.
- Application calls go through `await call(fn, *args)` (off the event loop; `NotFound` → the 404
  page, `Invalid`/`Conflict`/a bad import file → 400, an unreachable broker or a database away
  → 503, each a `Refusal` with its sentence). A form's action uses `await attempt(request,
  back, fn, ...)` instead: a 400 raises `Back`, whose `response` goes back to the form with the
  sentence flashed. Either way they always pass
  `user.tenant` (a user sees only its tenant) and `user.actor` (audited as `user:<name>` with the
  client address).
- `application(request)` (console/web.py) is the server's `Application`; `ConsoleUser` has
  `id, name, tenant, role, csrf, actor` and `may(action)`.
- `render(request, "x.html", status=200, **ctx) -> HTMLResponse`: Jinja2 (autoescape on) over
  `console/templates/`. Templates `{% extends "base.html" %}` and fill `{% block title %}` and
  `{% block content %}`. The context always holds `user` (or None), `csrf` (the session's token),
  `flashes` (list of (kind, text)), `roles` (host/server/roles.py) and `may(action)`.
  Globals: `csrf_field()` (the hidden input every form carries); filter `utc` (a Unix time →
  "2026-12-03 17:40:12 UTC", None → "-").
- After a successful POST answer `redirect(request, "/console/x", flash="Batch created.")`
  (303; the message is shown once on the next page; kind "ok" or "error").
- Static files live in `console/static/` and are served at `/console/static/`. No inline
  script or style anywhere (the CSP forbids them): classes from console.css, behaviour from
  console.js (`data-` attributes). console.js sends `X-CSRF-Token` from
  `<meta name="csrf">` on every fetch POST.
- Every console answer carries the security headers of docs/console.md (`SecurityHeaders`),
  and a `Refusal` or the router's 404/405 becomes the console's own error page.
- Tests: tests/console/conftest.py starts a real `qlink server` once; `console_as("operator",
  "acme")` is an httpx client signed in as a new user, with `.csrf` and `.post_form(path, data)`.
"""

from __future__ import annotations

import importlib
from typing import Any

from starlette.routing import Mount, Route, Router
from starlette.staticfiles import StaticFiles

from host.server.console.web import (
    STATIC_DIR,
    ConsoleUser,
    Refusal,
    SecurityHeaders,
    call,
    form_with_csrf,
    redirect,
    render,
    require_user,
)

__all__ = [
    "PAGE_MODULES",
    "ConsoleUser",
    "Refusal",
    "call",
    "console_app",
    "form_with_csrf",
    "redirect",
    "render",
    "require_user",
]

# One line per page module (host/server/console/pages_<topic>.py).
PAGE_MODULES: list[str] = [
    "auth",
    "pages_dashboard",
    "pages_live",
    "pages_devices",
    "pages_tenants",
    "pages_batches",
    "pages_ota",
    "pages_audit",
]


def page_routes() -> list[Route]:
    """Every page module's routes, in `PAGE_MODULES` order."""
    out: list[Route] = []
    for name in PAGE_MODULES:
        module = importlib.import_module(f"host.server.console.{name}")
        out.extend(module.routes)
    return out


def console_app() -> Any:
    """The ASGI app mounted at `/console` (a plain router: `request.app` stays the server's
    app, so `request.app.state.application` is the application)."""
    routes: list[Any] = [*page_routes()]
    routes.append(Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"))
    return SecurityHeaders(Router(routes=routes))
