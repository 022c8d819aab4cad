"""What every console page uses: the signed-in user, rendering, forms with their CSRF token,
redirects with a message, the refusals (login, 403, 404) and the security headers."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import jinja2
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from host.server import ServerError, roles
from host.server.application import Application
from host.server.limits import BodyTooLarge, BodyTooSlow, too_large_sentence
from host.server.store import (
    Actor,
    Conflict,
    DatabaseUnavailable,
    ImportRejected,
    Invalid,
    NotFound,
)

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
PREFIX = "/console"
SESSION_COOKIE = "qlink_session"
LOGIN_CSRF_COOKIE = "qlink_login_csrf"
FLASH_COOKIE = "qlink_flash"
T = TypeVar("T")

CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


@dataclass(frozen=True)
class ConsoleUser:
    """The signed-in user of one request."""

    id: int
    name: str
    tenant: str
    role: str
    csrf: str  # the session's CSRF token (hex)
    actor: Actor  # `user:<name>` and the client address, for every change

    def may(self, action: str) -> bool:
        """Whether this user may do `action` (a host/server/roles.py action or a role name)."""
        return roles.allowed(action, self.role, self.tenant)


class Refusal(ServerError):
    """Ends a console request with a page: 403 (refused), 404 (not found), 400 (a sentence),
    or a redirect to the login page (`login=True`)."""

    def __init__(self, status: int, sentence: str, *, login: bool = False) -> None:
        super().__init__(sentence)
        self.status, self.sentence, self.login = status, sentence, login


def utc(value: float | None) -> str:
    """A Unix time as "2026-12-03 17:40:12 UTC"; None as "-"."""
    if value is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(value))


def axis_time(value: float, since: float | None = None) -> str:
    """A chart axis's time, whose title says UTC: "2026-12-03 17:40:12", or only "17:40:12" when
    `since` (the axis's other end) is the same day, so both ends fit a phone's width."""
    day, clock = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value)).split(" ")
    if since is not None and time.strftime("%Y-%m-%d", time.gmtime(since)) == day:
        return clock
    return f"{day} {clock}"


SHORT_ID = 12  # hex characters of a device ID a table shows (the full ID is the link's title)


def short_id(device_id: str) -> str:
    """A device ID as a table shows it: its first characters, then an ellipsis."""
    return device_id[:SHORT_ID] + "…" if len(device_id) > SHORT_ID else device_id


@jinja2.pass_context
def _csrf_field(ctx: jinja2.runtime.Context) -> Markup:
    token = ctx.get("csrf") or ""
    return Markup('<input type="hidden" name="csrf" value="{}">').format(token)


env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
env.filters["utc"] = utc
env.filters["axis_time"] = axis_time
env.filters["short_id"] = short_id
env.globals["csrf_field"] = _csrf_field
env.globals["roles"] = roles


def application(request: Request) -> Application:
    app: Application = request.app.state.application
    return app


def client_address(request: Request) -> str:
    return request.client.host if request.client else "-"


def _flash_mac(csrf: str, text: str) -> str:
    return hmac.new(csrf.encode(), text.encode(), hashlib.sha256).hexdigest()[:32]


def _flashes(request: Request, user: ConsoleUser | None) -> list[tuple[str, str]]:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw or user is None:
        return []
    mac, _, rest = raw.partition(".")
    kind, _, text = rest.partition(".")
    text = _unquote(text)
    # Keyed by the session's own secret: a cookie set by anyone else is not shown.
    if kind not in ("ok", "error") or not hmac.compare_digest(mac, _flash_mac(user.csrf, text)):
        return []
    return [(kind, text)]


def _unquote(text: str) -> str:
    from urllib.parse import unquote

    return unquote(text)


def render(request: Request, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
    """The page `template` with `ctx`, the user, its CSRF token and its messages."""
    user: ConsoleUser | None = getattr(request.state, "console_user", None)
    flashes = _flashes(request, user)
    csrf = ctx.pop("csrf", None) or (user.csrf if user else "")
    body = env.get_template(template).render(
        request=request,
        user=user,
        csrf=csrf,
        flashes=flashes,
        may=(user.may if user else (lambda _a: False)),
        **ctx,
    )
    response = HTMLResponse(body, status_code=status)
    if flashes or FLASH_COOKIE in request.cookies:
        response.delete_cookie(
            FLASH_COOKIE, path=PREFIX, secure=True, httponly=True, samesite="strict"
        )
    return response


def redirect(request: Request, url: str, flash: str | None = None, kind: str = "ok") -> Response:
    """A 303 to `url` (a console path), showing `flash` once on the next page."""
    if not url.startswith(PREFIX + "/") and url != PREFIX:
        raise ValueError(f"a console redirect stays in {PREFIX}/: {url!r}")
    response = RedirectResponse(url, status_code=303)
    user: ConsoleUser | None = getattr(request.state, "console_user", None)
    if flash and user is not None:
        value = f"{_flash_mac(user.csrf, flash)}.{kind}.{quote(flash, safe='')}"
        response.set_cookie(
            FLASH_COOKIE, value, path=PREFIX, secure=True, httponly=True, samesite="strict"
        )
    return response


async def require_user(request: Request, action: str = roles.ROLE_VIEWER) -> ConsoleUser:
    """The signed-in user, allowed to do `action` (a roles.py action or a role name). Without
    a live session: `Refusal` → the login page; a role too low: `Refusal` → 403."""
    from host.server.console import auth

    user = await auth.session_user(request)
    if user is None:
        raise Refusal(401, "sign in first", login=True)
    request.state.console_user = user
    if not user.may(action):
        raise Refusal(403, roles.refusal(action, user.role, user.tenant))
    return user


def same_origin(request: Request) -> bool:
    """Whether the request's `Origin` (when sent) names this server."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    host = request.headers.get("host", "")
    return parts.scheme == "https" and parts.netloc.lower() == host.lower()


async def form_with_csrf(request: Request, *, max_part_size: int = 1024 * 1024) -> FormData:
    """The POST's form, once its CSRF token (`csrf` field or `X-CSRF-Token` header) matches
    the session's and its `Origin` is this server; else `Refusal` 403 (nothing changed).
    `max_part_size`: the largest non-file field (a pasted import may need more than 1 MiB)."""
    user: ConsoleUser | None = getattr(request.state, "console_user", None)
    if user is None:
        user = await require_user(request)
    if not same_origin(request):
        raise Refusal(403, "this form was sent from another site; nothing changed")
    header = request.headers.get("x-csrf-token")
    if header is not None and not _same_token(header, user.csrf):
        raise Refusal(403, _STALE)  # refused before a large body is parsed
    form = await request.form(max_part_size=max_part_size)
    sent = header if header is not None else form.get("csrf")
    if not isinstance(sent, str) or not _same_token(sent, user.csrf):
        raise Refusal(403, _STALE)
    return form


_STALE = "this form is out of date or was not sent by the console; reload the page"


def _same_token(sent: str, token: str) -> bool:
    return hmac.compare_digest(sent.encode(), token.encode())


async def call(fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    """Run an application call off the event loop; its errors become console refusals: the
    store's, a file that is no import file, and a broker that cannot be reached (or a server
    that is not running) with their own sentence."""
    from host.server.application import ServerNotRunning
    from host.server.identities import ImportFormatError
    from host.server.policy import PolicyError

    try:
        return await run_in_threadpool(fn, *args, **kw)
    except NotFound as e:
        raise Refusal(404, str(e)) from None
    except (Conflict, Invalid, ImportRejected) as e:
        raise Refusal(400, str(e)) from None
    except ImportFormatError as e:
        raise Refusal(400, f"{e}; nothing imported") from None
    except (DatabaseUnavailable, ServerNotRunning) as e:
        raise Refusal(503, str(e)) from None
    except PolicyError as e:
        raise Refusal(503, f"{e}; nothing changed, retry") from None


class Back(Exception):
    """An action refused for what the user sent: answer with `response` (a redirect back to the
    form, the sentence flashed)."""

    def __init__(self, response: Response) -> None:
        self.response = response


async def attempt(request: Request, back: str, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    """`call`; a refusal of the request itself (400) raises `Back` to `back` with its sentence."""
    try:
        return await call(fn, *args, **kw)
    except Refusal as e:
        if e.status != 400:
            raise
        raise Back(redirect(request, back, flash=e.sentence, kind="error")) from None


def refusal_response(request: Request, exc: Refusal) -> Response:
    if exc.login:
        target = request.url.path
        if request.url.query:
            target += "?" + request.url.query
        nxt = quote(target, safe="/") if request.method == "GET" else quote(PREFIX + "/")
        return RedirectResponse(f"{PREFIX}/login?next={nxt}", status_code=303)
    titles = {
        400: "Not done",
        403: "Not allowed",
        404: "Not found",
        405: "Not allowed here",
        408: "Too slow",
        413: "Too large",
        503: "Unavailable",
    }
    return render(
        request,
        "error.html",
        status=exc.status,
        title=titles.get(exc.status, "Error"),
        sentence=exc.sentence,
        back=_back(request),
    )


def _back(request: Request) -> str | None:
    """The console page the request came from (its Referer, when it is one of this console's
    pages), for the error page's link back; None: the dashboard."""
    referer = urlsplit(request.headers.get("referer", ""))
    host = request.headers.get("host", "").lower()
    path = referer.path
    if referer.scheme != "https" or referer.netloc.lower() != host or not path.startswith(PREFIX):
        return None
    if not all(c.isprintable() and c not in "\\\"'<>" for c in path):
        return None
    return path + (f"?{referer.query}" if referer.query else "")


class SecurityHeaders:
    """The console's outer layer: the headers of docs/console.md on every answer
    (`Cache-Control: no-store` on pages), `Server-Timing: app;dur=MS` (the request's start to
    its answer's, which bench/console.py reads), and `Refusal` answered as its page."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith(PREFIX + "/static/")
        started = False
        begun = time.perf_counter()  # for Server-Timing: the request's start to the answer's

        async def with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() not in (b"cache-control",) or static
                ]
                headers.extend(_HEADERS)
                spent_ms = (time.perf_counter() - begun) * 1000
                headers.append((b"server-timing", f"app;dur={spent_ms:.2f}".encode()))
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        async def within_limits() -> Message:
            # The request limits (host/server/limits.py) raise HTTPException, which a route
            # would answer as the API's JSON: here they become the console's pages.
            try:
                return await receive()
            except BodyTooLarge as e:
                raise Refusal(413, too_large_sentence(e.limit)) from None
            except BodyTooSlow as e:
                raise Refusal(408, str(e.detail)) from None

        try:
            await self.app(scope, within_limits, with_headers)
        except (Refusal, HTTPException) as exc:
            if started:
                raise
            if isinstance(exc, HTTPException):  # the router's 404 and 405: pages too
                exc = Refusal(
                    exc.status_code, _HTTP_SENTENCES.get(exc.status_code, str(exc.detail))
                )
            await refusal_response(Request(scope, receive), exc)(scope, receive, with_headers)


def too_large_page(limit: int) -> ASGIApp:
    """The console's answer to a request whose Content-Length is over `limit` (given to
    host/server/limits.py `RequestLimits` for /console): the 413 page with the console's headers,
    sent without reading the body, and the connection closed after it."""
    sentence = too_large_sentence(limit)

    async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
        raise Refusal(413, sentence)

    page = SecurityHeaders(refuse)

    async def answer(scope: Scope, receive: Receive, send: Send) -> None:
        async def closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"connection", b"close")]
                message = {**message, "headers": headers}
            await send(message)

        await page(scope, receive, closing)

    return answer


_HTTP_SENTENCES = {
    404: "there is no such page in the console",
    405: "this page does not take that kind of request",
}
