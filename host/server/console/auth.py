"""Signing in and out of the console: argon2id passwords, lockout, the session cookie, the login
form's double-submit CSRF cookie (docs/console.md "Users and sessions")."""

from __future__ import annotations

import asyncio
import functools
import hmac
import secrets
import weakref
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from argon2.profiles import RFC_9106_LOW_MEMORY
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from host.server.console.web import (
    LOGIN_CSRF_COOKIE,
    PREFIX,
    SESSION_COOKIE,
    ConsoleUser,
    Refusal,
    application,
    client_address,
    render,
    same_origin,
    utc,
)
from host.server.store import Actor, NotFound
from host.server.store.users import UserRecord, Users

MAX_FAILURES = 5  # failed logins in a row before the lockout
MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # characters: a longer one is refused before it is hashed
# Password checks at once in a process: each holds 64 MiB and ~100 ms of a core, so a flood of
# logins waits its turn instead of taking the memory; past CHECKS_WAITING it is refused (503).
CHECKS_AT_ONCE = 2
CHECKS_WAITING = 32
WRONG = "wrong user name or password"


class PasswordRefused(ValueError):
    """A new password breaks the rule (the message says which)."""


@functools.cache
def hasher() -> PasswordHasher:
    """argon2id with RFC 9106's low-memory profile (3 passes, 64 MiB, 4 lanes)."""
    return PasswordHasher.from_parameters(RFC_9106_LOW_MEMORY)


@functools.cache
def _dummy_hash(h: PasswordHasher) -> str:
    # An unknown name is verified against this, so it costs what a known one costs.
    return h.hash(secrets.token_urlsafe(16))


def check_password_rule(password: str) -> None:
    try:
        password.encode()
    except UnicodeEncodeError:  # bytes that were not UTF-8, held as surrogates
        raise PasswordRefused("a password must be UTF-8 text") from None
    if len(password) < MIN_PASSWORD:
        raise PasswordRefused(
            f"a password needs at least {MIN_PASSWORD} characters; this one has {len(password)}"
        )
    if not password.strip():
        raise PasswordRefused("a password must not be only spaces")
    if len(password) > MAX_PASSWORD:
        raise PasswordRefused(f"a password has at most {MAX_PASSWORD} characters")


class _Checks:
    """The process's turn-taking for password checks (made on the server's event loop)."""

    def __init__(self) -> None:
        self.turns = asyncio.Semaphore(CHECKS_AT_ONCE)
        self.waiting = 0


_CHECKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Checks] = weakref.WeakKeyDictionary()


def _checks() -> _Checks:
    """The running loop's (a semaphore belongs to one loop; a server process runs one)."""
    loop = asyncio.get_running_loop()
    checks = _CHECKS.get(loop)
    if checks is None:
        checks = _CHECKS[loop] = _Checks()
    return checks


def hash_password(password: str, h: PasswordHasher | None = None) -> str:
    check_password_rule(password)
    return (h or hasher()).hash(password)


@dataclass(frozen=True)
class LoginResult:
    cookie: str | None  # the session cookie's value when signed in
    error: str | None  # the sentence shown otherwise


def login(
    users: Users,
    name: str,
    password: str,
    actor_source: str,
    *,
    lockout_s: float,
    h: PasswordHasher | None = None,
) -> LoginResult:
    """Check a login (blocking: argon2 takes ~100 ms; run it off the event loop)."""
    h = h or hasher()
    actor = Actor(f"user:{name[:64]}", actor_source)
    user = users.get(name) if 0 < len(name) <= 64 else None
    if user is not None and user.locked(_now()):
        assert user.locked_until is not None
        return LoginResult(
            None,
            f"this account is locked until {utc(user.locked_until)}; ask an admin to "
            "unlock it (qlink user unlock NAME) or wait",
        )
    ok = _verify(h, user.password_hash if user is not None else _dummy_hash(h), password)
    if user is None or user.disabled_at is not None:
        return LoginResult(None, WRONG)
    if not ok:
        try:
            users.login_failed(name, actor, max_failures=MAX_FAILURES, lockout_s=lockout_s)
        except NotFound:  # deleted meanwhile
            pass
        return LoginResult(None, WRONG)
    if h.check_needs_rehash(user.password_hash):
        users.set_password_hash(name, h.hash(password), actor)
    cookie, _session = users.login_succeeded(name, actor)
    return LoginResult(cookie, None)


def _verify(h: PasswordHasher, stored: str, password: str) -> bool:
    try:
        return h.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _now() -> float:
    import time

    return time.time()


def _users(request: Request) -> Users:
    return application(request).store.users


async def session_user(request: Request) -> ConsoleUser | None:
    """The user of the request's live session, or None."""
    cached: ConsoleUser | None = getattr(request.state, "console_user", None)
    if cached is not None:
        return cached
    value = request.cookies.get(SESSION_COOKIE)
    if not value:
        return None
    session = await run_in_threadpool(_users(request).session, value)
    if session is None:
        return None
    u: UserRecord = session.user
    return ConsoleUser(
        id=u.id,
        name=u.name,
        tenant=u.tenant,
        role=u.role,
        csrf=session.csrf,
        actor=Actor(f"user:{u.name}", client_address(request)),
    )


def _set_session(response: Response, value: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        value,  # no Max-Age: the store ends it (ABSOLUTE_S, IDLE_S); the browser at its exit
        path=PREFIX,
        secure=True,
        httponly=True,
        samesite="strict",
    )


def _login_page(request: Request, error: str | None, name: str = "", status: int = 200) -> Response:
    token = secrets.token_hex(32)
    nxt = _safe_next(request.query_params.get("next"))
    response = render(
        request,
        "login.html",
        status=status,
        csrf=token,
        error=error,
        name=name,
        next=nxt,
        signed_out=request.query_params.get("out") == "1",
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE, token, path=PREFIX, secure=True, httponly=True, samesite="strict"
    )
    return response


def _safe_next(value: Any) -> str:
    """Where to go after signing in: a console path, never another site."""
    if isinstance(value, str) and value.startswith(PREFIX + "/") and "//" not in value:
        if "\\" not in value and all(c.isprintable() for c in value):
            return value
    return PREFIX + "/"


async def login_page(request: Request) -> Response:
    if await session_user(request) is not None:
        return RedirectResponse(_safe_next(request.query_params.get("next")), status_code=303)
    return _login_page(request, None)


async def login_post(request: Request) -> Response:
    if not same_origin(request):
        raise Refusal(403, "this form was sent from another site; nothing changed")
    form = await request.form()
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    sent = form.get("csrf")
    if not cookie or not isinstance(sent, str) or not hmac.compare_digest(sent, cookie):
        raise Refusal(403, "this sign-in form is out of date; reload the page and sign in again")
    name = form.get("name")
    password = form.get("password")
    if not isinstance(name, str) or not isinstance(password, str) or not name or not password:
        return _login_page(request, "enter your user name and password", status=400)
    if len(name) > 64 or len(password) > MAX_PASSWORD:
        return _login_page(request, WRONG, name=name[:64])
    settings = application(request).settings
    checks = _checks()
    if checks.waiting >= CHECKS_WAITING:
        raise Refusal(503, "too many sign-ins at once; try again in a few seconds")
    checks.waiting += 1
    try:
        async with checks.turns:
            result = await run_in_threadpool(
                login,
                _users(request),
                name,
                password,
                client_address(request),
                lockout_s=settings.console_lockout_s,
            )
    finally:
        checks.waiting -= 1
    if result.cookie is None:
        # 200, not 401: a browser logs every 4xx page as an error, and a mistyped password is
        # no fault of the page. The sentence is in the page's role="alert" element.
        return _login_page(request, result.error, name=name[:64])
    response = RedirectResponse(_safe_next(form.get("next")), status_code=303)
    _set_session(response, result.cookie)
    response.delete_cookie(
        LOGIN_CSRF_COOKIE, path=PREFIX, secure=True, httponly=True, samesite="strict"
    )
    return response


async def logout(request: Request) -> Response:
    from host.server.console.web import form_with_csrf

    response = RedirectResponse(f"{PREFIX}/login?out=1", status_code=303)
    user = await session_user(request)
    if user is not None:
        request.state.console_user = user
        await form_with_csrf(request)
        value = request.cookies.get(SESSION_COOKIE, "")
        actor = user.actor
        await run_in_threadpool(_users(request).end_session, value, actor)
    response.delete_cookie(
        SESSION_COOKIE, path=PREFIX, secure=True, httponly=True, samesite="strict"
    )
    return response


routes = [
    Route("/login", login_page, methods=["GET"]),
    Route("/login", login_post, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
]
