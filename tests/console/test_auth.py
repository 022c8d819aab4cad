"""Signing in and out of the console on the real server: argon2id, the same answer for a wrong
password and an unknown name, lockout and unlock, the session cookie and its expiry, CSRF and
Origin checks, tenant isolation and the security headers (docs/console.md)."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from consoleutil import CHEAP, PASSWORD, Console, ConsoleAs

from hil.simdevice import SimDevice
from host.server.console import auth
from host.server.console.web import CSP
from host.server.store.users import IDLE_S

WRONG = "wrong user name or password"


def _login_form(c: httpx.Client) -> str:
    r = c.get("/console/login")
    assert r.status_code == 200
    token = r.cookies.get("qlink_login_csrf")
    assert token and f'name="csrf" value="{token}"' in r.text
    return token


def _login(c: httpx.Client, name: str, password: str, **headers: str) -> httpx.Response:
    token = _login_form(c)
    return c.post(
        "/console/login",
        data={"csrf": token, "name": name, "password": password, "next": "/console/"},
        headers=headers,
    )


def _sessions(console: Console, name: str) -> list[Any]:
    user = console.store.users.require(name)
    return console.store.db.all(
        "SELECT id_hash, last_seen, expires_at FROM console_sessions WHERE user_id = :id",
        {"id": user.id},
    )


def _audit(console: Console, action: str, name: str) -> int:
    return len(
        console.store.db.all(
            "SELECT 1 FROM audit WHERE action = :a AND target = :t",
            {"a": action, "t": f"user:{name}"},
        )
    )


def _prod_user(console: Console, role: str = "viewer", tenant: str = "acme") -> str:
    name = console.user(role, tenant)
    console.store.users.set_password_hash(name, auth.hash_password(PASSWORD))
    return name


# -- login -------------------------------------------------------------------------------------
def test_login_with_the_right_password_starts_a_session_with_the_spec_cookie(
    console: Console,
) -> None:
    name = _prod_user(console)
    with console.client() as c:
        r = _login(c, name, PASSWORD)
        assert r.status_code == 303 and r.headers["location"] == "/console/"
        cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith("qlink_session="))
        value = cookie.split(";")[0].split("=", 1)[1]
        attrs = sorted(a.strip().lower() for a in cookie.split(";")[1:])
        assert attrs == ["httponly", "path=/console", "samesite=strict", "secure"]
        assert len(value) == 43  # 32 random bytes, base64url
        # The store holds only the SHA-256 of the cookie's value.
        hashes = [s["id_hash"] for s in _sessions(console, name)]
        assert hashes == [hashlib.sha256(value.encode()).hexdigest()]
        page = c.get("/console/")
        assert page.status_code == 200
        assert name in page.text and "acme" in page.text and "viewer" in page.text
    assert _audit(console, "user.login", name) == 1
    row = console.store.db.one(
        "SELECT actor, source FROM audit WHERE action = 'user.login' AND target = :t",
        {"t": f"user:{name}"},
    )
    assert row is not None and row["actor"] == f"user:{name}" and row["source"] == "127.0.0.1"


def test_a_hash_with_old_parameters_is_recomputed_at_login(console: Console) -> None:
    name = console.user("viewer")  # the tests' cheap parameters
    assert "m=1024,t=1" in console.store.users.require(name).password_hash
    with console.client() as c:
        assert _login(c, name, PASSWORD).status_code == 303
    stored = console.store.users.require(name).password_hash
    assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert not auth.hasher().check_needs_rehash(stored)


def test_production_hasher_is_rfc9106_low_memory() -> None:
    h = auth.hasher()
    assert (h.time_cost, h.memory_cost, h.parallelism) == (3, 65536, 4)
    assert h.type.name == "ID"


@pytest.mark.parametrize("password", ["short", "x" * 11])
def test_a_password_under_12_characters_is_refused(password: str) -> None:
    with pytest.raises(auth.PasswordRefused, match="at least 12 characters"):
        auth.hash_password(password, CHEAP)
    assert auth.hash_password("x" * 12, CHEAP).startswith("$argon2id$")


def test_a_password_over_1024_characters_is_refused_before_hashing() -> None:
    with pytest.raises(auth.PasswordRefused, match="at most 1024 characters"):
        auth.hash_password("x" * 1025, CHEAP)
    assert auth.hash_password("x" * 1024, CHEAP).startswith("$argon2id$")


def test_wrong_password_and_unknown_name_answer_the_same_sentence(console: Console) -> None:
    name = console.user("viewer")
    with console.client() as c:
        wrong = _login(c, name, "not the password at all")
        unknown = _login(c, "nobody-" + name, PASSWORD)
    for r in (wrong, unknown):
        assert r.status_code == 200  # the login page again, its sentence announced
        assert re.search(rf'role="alert"[^>]*>{re.escape(WRONG)}<', r.text), r.text
        assert "qlink_session" not in r.headers.get("set-cookie", "")
    assert _sessions(console, name) == []
    assert console.store.users.require(name).failed_logins == 1


def test_an_unknown_name_costs_the_same_verify_as_a_known_one(console: Console) -> None:
    calls: list[str] = []

    class Counting(type(CHEAP)):  # type: ignore[misc]
        def verify(self, hash: str | bytes, password: str | bytes) -> bool:
            calls.append(str(hash)[:40])
            return bool(super().verify(hash, password))

    h = Counting(time_cost=1, memory_cost=1024, parallelism=1)
    name = console.user("viewer")
    users = console.store.users
    kw: dict[str, Any] = {"lockout_s": 900, "h": h}
    assert auth.login(users, "no-such-user", "whatever password", "t", **kw).error == WRONG
    assert auth.login(users, name, "whatever password", "t", **kw).error == WRONG
    assert len(calls) == 2  # one verify each, the unknown name against a real argon2id hash
    assert calls[0].startswith("$argon2id$v=19$m=1024,t=1,p=1$")


def test_five_failures_lock_the_account_until_unlocked(console: Console) -> None:
    name = console.user("operator")
    with console.client() as c:
        for _ in range(auth.MAX_FAILURES):
            r = _login(c, name, "not the password at all")
            assert r.status_code == 200 and WRONG in r.text  # the same sentence until locked
            assert 'role="alert"' in r.text and 'name="password"' in r.text
        before = time.time()
        r = _login(c, name, PASSWORD)  # even the right password
        assert r.status_code == 200 and "qlink_session" not in r.headers.get("set-cookie", "")
        assert 'role="alert"' in r.text
        m = re.search(r"locked until (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", r.text)
        assert m, r.text
        until = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) - time.timezone
        assert before + 900 - 5 <= until <= before + 900 + 5
        assert _sessions(console, name) == []
        assert _audit(console, "user.lock", name) == 1
        listed = console.proc.cli("user", "list", "--json").stdout
        assert '"locked_until": null' not in listed.split(f'"name": "{name}"')[1].split("}")[0]
        console.proc.cli("user", "unlock", name)
        assert _audit(console, "user.unlock", name) == 1
        assert _login(c, name, PASSWORD).status_code == 303


def test_a_login_post_without_its_csrf_cookie_is_refused_and_changes_nothing(
    console: Console,
) -> None:
    name = console.user("viewer")
    with console.client() as c:
        token = _login_form(c)
        c.cookies.clear()
        r = c.post("/console/login", data={"csrf": token, "name": name, "password": PASSWORD})
        assert r.status_code == 403
        _login_form(c)
        r = c.post("/console/login", data={"csrf": "0" * 64, "name": name, "password": "bad"})
        assert r.status_code == 403
    user = console.store.users.require(name)
    assert user.failed_logins == 0 and _sessions(console, name) == []


def test_a_login_from_another_origin_is_refused(console: Console) -> None:
    name = console.user("viewer")
    with console.client() as c:
        r = _login(c, name, PASSWORD, origin="https://evil.example")
        assert r.status_code == 403
    assert _sessions(console, name) == []


def test_next_never_leaves_the_console(console: Console) -> None:
    name = console.user("viewer")
    with console.client() as c:
        token = _login_form(c)
        data = {"csrf": token, "name": name, "password": PASSWORD, "next": "//evil.example/x"}
        r = c.post("/console/login", data=data)
        assert r.status_code == 303 and r.headers["location"] == "/console/"


# -- sessions ----------------------------------------------------------------------------------
def test_not_signed_in_goes_to_the_login_page(console: Console) -> None:
    with console.client() as c:
        r = c.get("/console/")
        assert r.status_code == 303
        assert r.headers["location"] == "/console/login?next=/console/"
    with console.client(cookies={"qlink_session": "made-up"}) as c:
        r = c.get("/console/")
        assert r.status_code == 303
        r = c.get("/")
        assert r.status_code == 303 and r.headers["location"] == "/console/"


def test_a_session_ends_after_an_idle_hour(console: Console, console_as: ConsoleAs) -> None:
    c = console_as("viewer")
    assert c.get("/console/").status_code == 200
    console.sql(
        "UPDATE console_sessions SET last_seen = :t WHERE user_id = "
        "(SELECT id FROM console_users WHERE name = :n)",
        {"t": time.time() - IDLE_S - 1, "n": c.name},
    )
    r = c.get("/console/")
    assert r.status_code == 303 and r.headers["location"].startswith("/console/login")
    assert _sessions(console, c.name) == []


def test_a_session_ends_12_hours_after_it_began(console: Console, console_as: ConsoleAs) -> None:
    c = console_as("viewer")
    assert c.get("/console/").status_code == 200
    console.sql(  # active all along (last_seen now), but begun 12 hours ago
        "UPDATE console_sessions SET created_at = :b, expires_at = :e WHERE user_id = "
        "(SELECT id FROM console_users WHERE name = :n)",
        {"b": time.time() - 12 * 3600, "e": time.time() - 1, "n": c.name},
    )
    assert c.get("/console/").status_code == 303
    assert _sessions(console, c.name) == []


def test_last_seen_is_written_at_most_once_a_minute(
    console: Console, console_as: ConsoleAs
) -> None:
    c = console_as("viewer")
    recent = time.time() - 30
    where = "WHERE user_id = (SELECT id FROM console_users WHERE name = :n)"
    console.sql(f"UPDATE console_sessions SET last_seen = :t {where}", {"t": recent, "n": c.name})
    c.get("/console/")
    assert _sessions(console, c.name)[0]["last_seen"] == recent
    older = time.time() - 120
    console.sql(f"UPDATE console_sessions SET last_seen = :t {where}", {"t": older, "n": c.name})
    c.get("/console/")
    assert _sessions(console, c.name)[0]["last_seen"] > time.time() - 10


def test_logout_ends_the_session(console: Console, console_as: ConsoleAs) -> None:
    c = console_as("operator")
    value = c.cookies["qlink_session"]
    r = c.post_form("/console/logout")
    assert r.status_code == 303 and r.headers["location"] == "/console/login?out=1"
    assert _sessions(console, c.name) == []
    assert _audit(console, "user.logout", c.name) == 1
    with console.client(cookies={"qlink_session": value}) as again:
        assert again.get("/console/").status_code == 303


def test_logout_by_script_header_works(console: Console, console_as: ConsoleAs) -> None:
    c = console_as("viewer")
    r = c.post("/console/logout", headers={"X-CSRF-Token": c.csrf})
    assert r.status_code == 303
    assert _sessions(console, c.name) == []


@pytest.mark.parametrize(
    "data,headers",
    [
        ({}, {}),  # no token
        ({"csrf": "0" * 64}, {}),  # wrong token
        ({"csrf": "short"}, {}),
        ({}, {"X-CSRF-Token": "0" * 64}),
    ],
)
def test_a_post_without_the_right_csrf_token_is_403_and_changes_nothing(
    console: Console, console_as: ConsoleAs, data: dict[str, str], headers: dict[str, str]
) -> None:
    c = console_as("operator")
    r = c.post("/console/logout", data=data, headers=headers)
    assert r.status_code == 403
    assert "reload the page" in r.text
    assert len(_sessions(console, c.name)) == 1
    assert c.get("/console/").status_code == 200


def test_a_post_from_another_origin_is_403_and_changes_nothing(
    console: Console, console_as: ConsoleAs
) -> None:
    c = console_as("operator")
    r = c.post_form("/console/logout", headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and "another site" in r.text
    assert len(_sessions(console, c.name)) == 1
    own = c.post_form("/console/logout", headers={"Origin": console.url})
    assert own.status_code == 303


def test_deleting_a_user_ends_its_sessions(console: Console, console_as: ConsoleAs) -> None:
    c = console_as("admin")
    assert c.get("/console/").status_code == 200
    console.proc.cli("user", "delete", c.name)
    assert c.get("/console/").status_code == 303


# -- tenants and headers -----------------------------------------------------------------------
def test_another_tenants_devices_are_invisible(
    console: Console, console_as: ConsoleAs, tmp_path: Path
) -> None:
    console.proc.cli("batch", "create", "gx-secret", "--tenant", "globex")
    ids = tmp_path / "ids.csv"
    device = SimDevice("https://localhost", console.proc.root_der())
    ids.write_text(device.csv_line() + "\n")
    console.proc.cli("batch", "import", "gx-secret", str(ids), "--tenant", "globex")
    acme = console_as("viewer", "acme").get("/console/")
    globex = console_as("viewer", "globex").get("/console/")
    assert acme.status_code == globex.status_code == 200
    total = re.compile(r'data-count="total">(\d+)<')
    m_acme, m_globex = total.search(acme.text), total.search(globex.text)
    assert m_acme and m_globex
    assert int(m_globex.group(1)) >= 1 and int(m_acme.group(1)) == 0
    assert device.device_id not in acme.text and "gx-secret" not in acme.text


def _check_headers(r: httpx.Response, page: bool = True) -> None:
    assert r.headers["content-security-policy"] == CSP
    assert "unsafe-inline" not in CSP
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "same-origin"
    if page:
        assert r.headers["cache-control"] == "no-store"


def test_security_headers_on_every_console_answer(console: Console, console_as: ConsoleAs) -> None:
    with console.client() as anon:
        _check_headers(anon.get("/console/login"))
        _check_headers(anon.get("/console/"))  # the redirect to the login page
        _check_headers(anon.get("/console/static/console.css"), page=False)
        _check_headers(anon.get("/console/static/console.js"), page=False)
        _check_headers(anon.get("/console/no-such-page"))
    c = console_as("viewer")
    _check_headers(c.get("/console/"))
    _check_headers(c.post("/console/logout"))  # the 403 page


def test_pages_have_no_inline_script_or_style(console: Console, console_as: ConsoleAs) -> None:
    pages = [console_as("admin").get("/console/").text]
    with console.client() as anon:
        pages.append(anon.get("/console/login").text)
    for text in pages:
        assert "<script>" not in text and "style=" not in text and "<style" not in text
        assert not re.search(r"\son[a-z]+=", text)  # no inline event handlers


# -- the frame's helpers on an operator action (in-process) --------------------------------------
@pytest.fixture(scope="module")
def frame(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A console with one operator action (`POST /console/act`) built from the frame's helpers,
    as a page module would, in-process over the real application."""
    import anyio.from_thread
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Mount, Route, Router

    from host.server import roles
    from host.server.application import Application
    from host.server.console import form_with_csrf, pages_dashboard, redirect, require_user
    from host.server.console.web import SecurityHeaders
    from host.server.settings import Settings

    hits: list[str] = []

    async def act(request: Request) -> Response:
        await require_user(request, roles.DEVICE_REVOKE)
        form = await form_with_csrf(request)
        hits.append(str(form.get("what")))
        return redirect(request, "/console/", flash="Done: <b>revoked</b>.")

    routes = [Route("/act", act, methods=["POST"]), *auth.routes, *pages_dashboard.routes]
    app = Starlette(routes=[Mount("/console", SecurityHeaders(Router(routes)))])
    settings = Settings(data_dir=tmp_path_factory.mktemp("frame"))
    application = Application.for_operator(settings)
    application.create_tenant("acme")
    app.state.application = application
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 4444))
    with anyio.from_thread.start_blocking_portal() as portal:

        def client(role: str) -> Any:
            name = f"{role}-{len(hits)}-{time.monotonic_ns()}"
            application.store.users.create(name, "acme", role, CHEAP.hash(PASSWORD))
            value, session = application.store.users.create_session(name)
            c = httpx.AsyncClient(
                transport=transport, base_url="https://localhost", cookies={"qlink_session": value}
            )

            def call(method: str, path: str, **kw: Any) -> httpx.Response:
                return portal.call(lambda: c.request(method, path, **kw))

            return call, session.csrf, name, c

        yield client, hits, application
    application.close()


def test_a_viewer_gets_the_403_page_on_an_operator_action(frame: Any) -> None:
    client, hits, _ = frame
    call, csrf, _, _ = client("viewer")
    r = call("POST", "/console/act", data={"csrf": csrf, "what": "x"})
    assert r.status_code == 403
    assert "this needs the operator role; you are viewer" in r.text
    assert r.headers["content-security-policy"] == CSP
    assert hits == []


def test_an_operator_action_with_its_csrf_token_runs_and_flashes_once(frame: Any) -> None:
    client, hits, _ = frame
    call, csrf, _, c = client("operator")
    assert call("POST", "/console/act", data={"what": "x"}).status_code == 403
    assert call("POST", "/console/act", data={"csrf": "f" * 64, "what": "x"}).status_code == 403
    assert hits == []
    r = call("POST", "/console/act", data={"csrf": csrf, "what": "dev1"})
    assert r.status_code == 303 and r.headers["location"] == "/console/"
    assert hits == ["dev1"]
    page = call("GET", "/console/")  # the client keeps the message's cookie
    assert "Done: &lt;b&gt;revoked&lt;/b&gt;." in page.text  # escaped: autoescape is on
    assert "Done: " not in call("GET", "/console/").text  # shown once
    c.cookies.set("qlink_flash", "00.ok.Forged")
    forged = call("GET", "/console/")
    assert "Forged" not in forged.text  # a message not keyed by the session is not shown


def test_the_session_user_acts_as_user_name_with_its_address(frame: Any) -> None:
    client, _, application = frame
    call, csrf, name, _ = client("operator")
    assert call("POST", "/console/logout", data={"csrf": csrf}).status_code == 303
    events = [e for e in application.audit() if e.target == f"user:{name}"]
    assert [(e.action, e.actor, e.source) for e in events if e.action == "user.logout"] == [
        ("user.logout", f"user:{name}", "203.0.113.9")
    ]


def test_a_flood_of_logins_waits_its_turn_and_the_excess_is_refused(console: Console) -> None:
    # Each check holds 64 MiB: a process runs CHECKS_AT_ONCE of them and lets CHECKS_WAITING
    # wait; a flood beyond that is answered 503 at once, and the server stays usable.
    from concurrent.futures import ThreadPoolExecutor

    from host.server.console.auth import CHECKS_AT_ONCE, CHECKS_WAITING

    flood = CHECKS_WAITING + 16
    clients = [console.client() for _ in range(flood)]
    forms = [_login_form(c) for c in clients]

    def attempt(i: int) -> httpx.Response:
        data = {"csrf": forms[i], "name": f"nobody-{i}", "password": "not a password at all"}
        return clients[i].post("/console/login", data=data)

    try:
        with ThreadPoolExecutor(flood) as pool:
            answers = list(pool.map(attempt, range(flood)))
    finally:
        for c in clients:
            c.close()
    codes = sorted(r.status_code for r in answers)
    assert set(codes) == {200, 503}, codes
    assert codes.count(200) >= CHECKS_AT_ONCE
    assert all("too many sign-ins" in r.text for r in answers if r.status_code == 503)
    name = console.user("viewer")
    with console.client() as c:
        assert _login(c, name, PASSWORD).status_code == 303
