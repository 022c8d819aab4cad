"""host/server/roles.py is the one table of who may do what: every route of the operator API and
of the console is in it, and each enforces exactly its line (below the role: 403; at it: not)."""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from apiutil import OperatorApi, operator_api
from consoleutil import Console, ConsoleAs
from fastapi.routing import APIRoute
from starlette.routing import Mount, Route

from host.server import admin, roles
from host.server.app import create_app
from host.server.console.web import SecurityHeaders
from host.server.policy import MemoryPolicy
from host.server.settings import Settings

_PARAMS = {"name": "rt-none", "device_id": "ab" * 32, "rollout_id": "1", "handle": "h"}
_BODIES: dict[str, Any] = {
    "/v1/admin/tenants": {"name": "rt-tenant"},
    "/v1/admin/targets": {
        "name": "rt-target",
        "kind": "aws",
        "host": "iot.example",
        "port": 8883,
        "ca_pem": "x",
    },
    "/v1/admin/batches": {"name": "rt-batch"},
    "/v1/admin/batches/{name}/state": {"active": True},
    "/v1/admin/batches/{name}/policy": {"to": "managed"},
    "/v1/admin/batches/{name}/import": {"format": "csv", "data": ""},
    "/v1/admin/devices/{device_id}/commands": {"kind": "ping"},
    "/v1/admin/claims": {"code": "x", "batch": "rt-none"},
    "/v1/admin/tokens": {"name": "rt-op", "role": "viewer"},
    "/v1/admin/ota/rollouts": {"release": "r", "batch": "rt-none"},
}


def _fill(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: _PARAMS[m.group(1)], path)


def _admin_routes() -> dict[tuple[str, str], APIRoute]:
    out = {}
    for r in admin.router.routes:
        assert isinstance(r, APIRoute)
        for method in r.methods or ():
            out[(method, r.path)] = r
    assert len(out) > 30
    return out


def _console_routes() -> set[tuple[str, str]]:
    app = create_app(Settings(data_dir=Path("/nonexistent-qlink")), policy=MemoryPolicy())
    mount = next(r for r in app.routes if isinstance(r, Mount) and r.path == "/console")
    outer = mount.app
    assert isinstance(outer, SecurityHeaders)
    found = set()
    for r in outer.app.routes:  # type: ignore[attr-defined]
        if isinstance(r, Route):
            for method in r.methods or ():
                if method != "HEAD":
                    found.add((method, r.path))
    return found


def test_every_admin_route_is_in_the_table_and_nothing_else() -> None:
    assert set(_admin_routes()) == set(roles.ADMIN_ROUTES)


def test_every_console_route_is_in_the_table_and_nothing_else() -> None:
    found = _console_routes()
    missing = found - set(roles.CONSOLE_ROUTES)
    assert not missing, f"add these to host/server/roles.py CONSOLE_ROUTES: {sorted(missing)}"
    assert set(roles.CONSOLE_ROUTES) <= found, "CONSOLE_ROUTES names a route nobody serves"


def test_every_action_of_the_table_is_defined() -> None:
    for action in [*roles.ADMIN_ROUTES.values(), *roles.CONSOLE_ROUTES.values()]:
        if action is not None:
            assert roles.rule(action).role in roles.ROLES


def test_each_admin_endpoint_checks_the_action_its_line_names() -> None:
    """The source of each endpoint calls `_need(op, roles.<its action>)` (reads: none)."""
    for (method, path), route in _admin_routes().items():
        tree = ast.parse(inspect.getsource(route.endpoint).lstrip())
        needs = [
            n.args[1].attr
            for n in ast.walk(tree)
            if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Name)
            and n.func.id == "_need"
            and isinstance(n.args[1], ast.Attribute)
        ]
        action = roles.ADMIN_ROUTES[(method, path)]
        if action == roles.READ:
            assert needs in ([], ["READ"]), (method, path, needs)
        else:
            assert [getattr(roles, n) for n in needs] == [action], (method, path, needs)


def test_platform_actions_are_only_the_default_tenants_admin() -> None:
    for action, rule in roles.ACTIONS.items():
        if rule.platform:
            assert roles.allowed(action, "admin", "default")
            assert not roles.allowed(action, "admin", "acme")
            assert not roles.allowed(action, "operator", "default")
    assert not roles.allowed(roles.BATCH_CREATE, "viewer", "default")
    assert roles.allowed(roles.BATCH_CREATE, "operator", "acme")
    assert not roles.allowed(roles.READ, "superuser", "acme")  # an unknown role has nothing


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorApi]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("roles"), broker_port=18883)
    pairs = [(t, r) for t in ("default", "acme") for r in roles.ROLES]
    with operator_api(settings, pairs) as a:
        yield a


def _who(action: str) -> tuple[list[str], str]:
    """(tokens that must be refused, the token that must not be)."""
    rule = roles.rule(action)
    if rule.platform:
        return ["acme-admin", "default-operator", "default-viewer"], "default-admin"
    below = roles.ROLES[: roles.ROLES.index(rule.role)]
    return [f"acme-{r}" for r in below], f"acme-{rule.role}"


def _call(api: OperatorApi, method: str, path: str, token: str) -> httpx.Response:
    url = _fill(path)
    headers = {"Authorization": f"Bearer {api.tokens[token]}"}
    if path == "/v1/admin/ota/releases" and method == "POST":
        kw: dict[str, Any] = {
            "content": b"not a bundle",
            "headers": {**headers, "Content-Type": "application/octet-stream"},
        }
    else:
        kw = {"headers": headers, "json": _BODIES.get(path, {}) if method == "POST" else None}
    r: httpx.Response = api.portal.call(lambda: api.client.request(method, url, **kw))
    return r


@pytest.mark.parametrize(
    "method,path",
    sorted(k for k, v in roles.ADMIN_ROUTES.items() if v != roles.READ),
)
def test_admin_route_enforces_its_line(api: OperatorApi, method: str, path: str) -> None:
    action = roles.ADMIN_ROUTES[(method, path)]
    refused, allowed = _who(action)
    for token in refused:
        r = _call(api, method, path, token)
        assert r.status_code == 403, (token, r.text)
        assert r.json()["error"] == "forbidden"
    r = _call(api, method, path, allowed)
    assert r.status_code not in (401, 403), (allowed, r.text)


def _head(c: httpx.Client, method: str, path: str, data: dict[str, str]) -> int:
    """The status of a console request, without reading a body (a stream may never end); a
    redirect to the login page counts as 401."""
    kw: dict[str, Any] = {"data": data} if method == "POST" else {}
    with c.stream(method, _fill(path), **kw) as r:
        if r.status_code == 303 and r.headers["location"].startswith("/console/login"):
            return 401
        return r.status_code


@pytest.mark.parametrize(
    "method,path", sorted(k for k, v in roles.CONSOLE_ROUTES.items() if v is not None)
)
def test_console_route_enforces_its_line(
    console: Console, console_as: ConsoleAs, method: str, path: str
) -> None:
    action = roles.CONSOLE_ROUTES[(method, path)]
    assert action is not None
    with console.client() as anon:
        assert _head(anon, method, "/console" + path, {}) == 401  # to the login page
    rule = roles.rule(action)
    if rule.platform:
        refused = [console_as("admin", "acme"), console_as("operator", "default")]
        allowed = console_as("admin", "default")
    else:
        below = roles.ROLES[: roles.ROLES.index(rule.role)]
        refused = [console_as(r) for r in below]
        allowed = console_as(rule.role)
    for c in refused:
        assert _head(c, method, "/console" + path, {"csrf": c.csrf}) == 403, c.role
    assert _head(allowed, method, "/console" + path, {"csrf": allowed.csrf}) not in (401, 403)
