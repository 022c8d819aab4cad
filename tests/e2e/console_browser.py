"""Debian's chromium, headless, driven by Playwright (its sync API) against the console of the
e2e tests' real `qlink server`; what the browser tests share.

    pytest_plugins = ["console_browser"]

    def test_x(console_web: ConsoleWeb, operator: Credentials) -> None:
        page = console_web.signed_in(operator)       # a new context, signed in through the form
        page.goto("/console/batches")
        ...
        console_web.assert_clean()                   # no console error on any page so far

Every page opened through ConsoleWeb has its console messages and page errors collected; the
fixture fails the test at teardown if any page logged an error that no step declared expected
(`console_web.expecting(r"403")` around a step that is refused on purpose). Playwright never
downloads a browser here: it launches /usr/bin/chromium (`make setup` installs it).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hil.serverproc import ServerProcess

CHROMIUM = Path(os.environ.get("QLINK_CHROMIUM", "/usr/bin/chromium"))
PASSWORD = "correct horse battery staple"
TENANT = "acme"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
_serial = itertools.count(1)

# The text contrast of one element: its colour against the first opaque background behind it
# (WCAG 2 relative luminance). Returns [ratio, colour, background, text] or null when the element
# draws no text.
CONTRAST_JS = """
(el) => {
  const parse = (c) => {
    const m = c.match(/rgba?\\(([^)]+)\\)/);
    if (!m) return null;
    const p = m[1].split(/[ ,\\/]+/).filter(Boolean).map(Number);
    return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
  };
  const lum = (c) => {
    const f = (v) => {
      v /= 255;
      return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
    };
    return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]);
  };
  const blend = (top, bottom) => {
    const a = top[3];
    return [0, 1, 2].map((i) => top[i] * a + bottom[i] * (1 - a)).concat([1]);
  };
  const text = (el.innerText || el.value || "").trim();
  if (!text) return null;
  const style = getComputedStyle(el);
  if (style.visibility === "hidden" || style.display === "none") return null;
  let fg = parse(style.color);
  const layers = [];
  for (let n = el; n; n = n.parentElement) {
    const bg = parse(getComputedStyle(n).backgroundColor);
    if (bg && bg[3] > 0) { layers.push(bg); if (bg[3] >= 1) break; }
  }
  let back = [255, 255, 255, 1];
  for (let i = layers.length - 1; i >= 0; i--) back = blend(layers[i], back);
  fg = blend(fg, back);
  const a = lum(fg), b = lum(back);
  const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  const shown = `rgb(${back.slice(0, 3).map(Math.round)})`;
  return [Math.round(ratio * 100) / 100, style.color, shown, text.slice(0, 40)];
}
"""

# True when the page scrolls sideways.
SIDEWAYS_JS = "() => document.documentElement.scrollWidth > document.documentElement.clientWidth"


@dataclass(frozen=True)
class Credentials:
    name: str
    role: str
    tenant: str = TENANT
    password: str = PASSWORD


@dataclass
class BrowserLog:
    """What every page said: console messages and uncaught errors, by page URL."""

    entries: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, url, text)
    expected: list[re.Pattern[str]] = field(default_factory=list)
    unexpected: list[tuple[str, str, str]] = field(default_factory=list)

    def record(self, kind: str, url: str, text: str) -> None:
        self.entries.append((kind, url, text))
        if kind in ("error", "pageerror") and not any(p.search(text) for p in self.expected):
            self.unexpected.append((kind, url, text))

    def watch(self, page: Any) -> None:
        page.on(
            "console",
            lambda m: self.record(m.type, m.location.get("url") or page.url, m.text),
        )
        page.on("pageerror", lambda e: self.record("pageerror", page.url, str(e)))

    def report(self) -> str:
        return "\n".join(f"  [{k}] {u}: {t}" for k, u, t in self.unexpected)


def make_user(server: ServerProcess, role: str, tenant: str = TENANT) -> Credentials:
    """A new console user made as an administrator would: `qlink user create --password-stdin`
    (the production argon2id profile)."""
    server.ensure_tenant(tenant)
    cred = Credentials(f"{role}-{os.getpid()}-{next(_serial)}", role, tenant)
    env = dict(os.environ)
    if server.database_url:
        env["QLINK_DATABASE_URL"] = server.database_url
    subprocess.run(
        [
            *(sys.executable, "-m", "host.cli", "user", "create", cred.name, "--role", role),
            *("--tenant", tenant, "--password-stdin", "--data-dir", str(server.data_dir)),
        ],
        input=cred.password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    )
    return cred


class ConsoleWeb:
    """Browser contexts on one server's console, every page's log collected."""

    def __init__(self, browser: Any, base_url: str) -> None:
        self.browser = browser
        self.base_url = base_url.rstrip("/")
        self.log = BrowserLog()
        self.contexts: list[Any] = []

    def context(self, viewport: dict[str, int] | None = None) -> Any:
        # The server's certificate is issued by the data directory's own root, which this
        # throw-away browser profile does not hold: certificate errors are ignored for this
        # context only (the API tests check the chain itself).
        ctx = self.browser.new_context(
            base_url=self.base_url,
            ignore_https_errors=True,
            viewport=viewport or DESKTOP,
        )
        ctx.set_default_timeout(15_000)
        ctx.on("page", self.log.watch)
        self.contexts.append(ctx)
        return ctx

    def page(self, viewport: dict[str, int] | None = None, ctx: Any = None) -> Any:
        return (ctx or self.context(viewport)).new_page()

    def sign_in(self, page: Any, who: Credentials) -> None:
        """Through the login form, as a person does."""
        page.goto("/console/login")
        page.get_by_label("User name").fill(who.name)
        page.get_by_label("Password").fill(who.password)
        with page.expect_navigation():
            page.get_by_role("button", name="Sign in").click()
        assert "/console/login" not in page.url, page.inner_text("main")

    def signed_in(self, who: Credentials, viewport: dict[str, int] | None = None) -> Any:
        page = self.page(viewport)
        self.sign_in(page, who)
        return page

    @contextlib.contextmanager
    def expecting(self, pattern: str) -> Iterator[None]:
        """Console errors matching `pattern` are expected within the block (a page refused
        on purpose logs its status as an error)."""
        rx = re.compile(pattern)
        self.log.expected.append(rx)
        try:
            yield
        finally:
            self.log.expected.remove(rx)

    def assert_clean(self) -> None:
        """Fail on the console errors logged so far (each is reported once)."""
        report = self.log.report()
        self.log.unexpected.clear()
        assert not report, "console errors in the browser:\n" + report

    def close(self) -> None:
        for ctx in self.contexts:
            with contextlib.suppress(Exception):
                ctx.close()
        self.contexts.clear()


# Module scope: while Playwright's sync API runs, its event loop is the thread's running loop,
# so a later test module in the same worker could not call asyncio.run().
@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Debian's chromium under Playwright (never a downloaded browser)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing; `make setup` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def console_web(chromium: Any, server: ServerProcess) -> Iterator[ConsoleWeb]:
    """Browser contexts on the e2e server; fails the test if any page logged an error."""
    web = ConsoleWeb(chromium, server.api_url)
    yield web
    web.close()
    web.assert_clean()


@pytest.fixture(scope="module")
def operator(server: ServerProcess) -> Credentials:
    return make_user(server, "operator")


@pytest.fixture(scope="module")
def viewer(server: ServerProcess) -> Credentials:
    return make_user(server, "viewer")
