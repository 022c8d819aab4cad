"""Automatic accessibility checks of every console page in Debian's chromium (docs/console.md
"Pages": every input has a label; keyboard reachable with a visible focus ring; WCAG AA text
contrast; one column at 390 px with no sideways scroll), on the demo data `make screenshots`
uses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from hil import screenshots
from hil.serverproc import ServerProcess

if TYPE_CHECKING:  # the fixtures come in as a plugin (imported once, by pytest)
    from console_browser import ConsoleWeb

pytest_plugins = ["console_browser"]
pytestmark = pytest.mark.e2e

MIN_CONTRAST = 4.5
MAX_TABS = 80

UNLABELLED_JS = """
() => [...document.querySelectorAll("input, select, textarea")]
  .filter((el) => el.type !== "hidden")
  .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute("aria-labelledby"))
  .map((el) => el.outerHTML.slice(0, 120))
"""

FOCUSED_JS = """
() => {
  const el = document.activeElement;
  if (!el || el === document.body) return null;
  const s = getComputedStyle(el);
  const ring = (s.outlineStyle !== "none" && parseFloat(s.outlineWidth) > 0)
    || (s.boxShadow && s.boxShadow !== "none");
  return {tag: el.tagName.toLowerCase(), href: el.getAttribute("href"), ring: ring,
          nav: !!el.closest("nav[aria-label=Main]"), html: el.outerHTML.slice(0, 100)};
}
"""

FIRST_CONTROL_JS = """
() => {
  const el = [...document.querySelectorAll("main input, main select, main textarea, main button,"
                                          + " header button")]
    .find((e) => e.type !== "hidden" && !e.disabled && e.getClientRects().length);
  return el ? el.outerHTML.slice(0, 100) : null;
}
"""

TEXT_SELECTOR = (
    "p, li, td, th, dd, dt, label, caption, h1, h2, h3, summary, a, button, .badge, .button,"
    " .card-label, .card-value"
)


def _contrast_js() -> str:
    from console_browser import CONTRAST_JS

    return (
        "(sel) => { const one = " + CONTRAST_JS + ";\n"
        "return [...document.querySelectorAll(sel)]"
        ".filter((el) => !el.closest('svg') && !el.disabled && el.getClientRects().length)"
        ".map(one).filter((r) => r && r[0] < " + str(MIN_CONTRAST) + "); }"
    )


@pytest.fixture(scope="module")
def demo(server: ServerProcess) -> screenshots.Demo:
    return screenshots.seed(server, onboard=4)


@pytest.fixture(scope="module")
def pages(demo: screenshots.Demo) -> list[tuple[str, str]]:
    return [("login", "/console/login"), *screenshots.pages(demo), ("403", "")]


def _visit(web: ConsoleWeb, page: Any, name: str, path: str) -> None:
    if name == "403":
        with web.expecting(r"status of 403"):
            screenshots.refused_page(page)
        assert page.get_by_role("heading", level=1).count() == 1
    else:
        page.goto(path)


def _checks(web: ConsoleWeb, demo: screenshots.Demo, pages: list[tuple[str, str]]) -> list[str]:
    """Every finding on every page at 1280 px, as sentences."""
    findings: list[str] = []
    out_page = web.page()
    in_page = web.page()
    screenshots.sign_in(in_page, demo.operator)
    contrast = _contrast_js()
    for name, path in pages:
        page = out_page if name == "login" else in_page
        _visit(web, page, name, path)
        for html in page.evaluate(UNLABELLED_JS):
            findings.append(f"{name}: a form control without a label: {html}")
        for ratio, colour, back, text in page.evaluate(contrast, TEXT_SELECTOR):
            findings.append(f"{name}: contrast {ratio}:1 for {text!r} ({colour} on {back})")
        # The keyboard: from the top of the page, Tab reaches every main navigation link (when
        # signed in) and the first form control, each with a visible focus ring.
        page.evaluate("() => { document.activeElement && document.activeElement.blur(); }")
        first = page.evaluate(FIRST_CONTROL_JS)
        nav = set(
            page.eval_on_selector_all('nav[aria-label="Main"] a', "as => as.map(a => a.href)")
        )
        nav = {h.removeprefix(web.base_url) for h in nav}
        seen_nav: set[str] = set()
        reached_first = first is None
        for _ in range(MAX_TABS):
            page.keyboard.press("Tab")
            f = page.evaluate(FOCUSED_JS)
            if f is None:
                continue
            if not f["ring"]:
                findings.append(f"{name}: no visible focus ring on {f['html']}")
            if f["nav"] and f["href"]:
                seen_nav.add(f["href"])
            if first is not None and f["html"] == first:
                reached_first = True
            if seen_nav >= nav and reached_first:
                break
        if not seen_nav >= nav:
            findings.append(f"{name}: Tab never reached the links {sorted(nav - seen_nav)}")
        if not reached_first:
            findings.append(f"{name}: Tab never reached the first form control {first}")
    return findings


def test_every_page_has_labels_focus_rings_and_contrast(
    console_web: ConsoleWeb, demo: screenshots.Demo, pages: list[tuple[str, str]]
) -> None:
    findings = _checks(console_web, demo, pages)
    assert not findings, "\n".join(findings)
    console_web.assert_clean()


def test_no_page_scrolls_sideways_at_390_px(
    console_web: ConsoleWeb, demo: screenshots.Demo, pages: list[tuple[str, str]]
) -> None:
    from console_browser import PHONE, SIDEWAYS_JS

    out_page = console_web.page(PHONE)
    in_page = console_web.page(PHONE)
    screenshots.sign_in(in_page, demo.operator)
    wide = []
    for name, path in pages:
        page = out_page if name == "login" else in_page
        _visit(console_web, page, name, path)
        if page.evaluate(SIDEWAYS_JS):
            width = page.evaluate("() => document.documentElement.scrollWidth")
            wide.append(f"{name} ({width} px)")
    assert not wide, "pages that scroll sideways at 390 px: " + ", ".join(wide)
    console_web.assert_clean()
