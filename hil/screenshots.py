"""`make screenshots`: every console page at 1280x800 and at 390x844, written to
build/screenshots/<page>-<width>.png, from a real `qlink server` on a temporary data directory
seeded with demo data (tenants, batches, a few hundred devices in varied states, telemetry, PUF
reports, commands, a release and its rollout).

Exit status 1, naming the page, when a page scrolls sideways at 390 px or logs a console error.
`seed()` and `pages()` also serve tests/e2e/test_console_a11y.py.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hil.serverproc import ServerProcess
from hil.simdevice import SimDevice, pubkey_bytes

CHROMIUM = os.environ.get("QLINK_CHROMIUM", "/usr/bin/chromium")
OUT = Path("build/screenshots")
PASSWORD = "correct horse battery staple"  # noqa: S105 (the throw-away demo users')
WIDTHS = ({"width": 1280, "height": 800}, {"width": 390, "height": 844})
SIDEWAYS_JS = "() => document.documentElement.scrollWidth > document.documentElement.clientWidth"


class ScreenshotError(RuntimeError):
    """A page failed a check; the message names it."""


@dataclass
class Demo:
    """What seed() made: who signs in, and the IDs the pages' paths need."""

    operator: str
    viewer: str
    tenant: str
    batch: str
    device: str
    rollout: int | None
    counts: dict[str, int] = field(default_factory=dict)


def _cli(server: ServerProcess, *args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "host.cli", *args, "--data-dir", str(server.data_dir)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise ScreenshotError(f"qlink {' '.join(args[:3])} failed: {proc.stderr.strip()[-400:]}")
    return proc.stdout


def seed(server: ServerProcess, *, scale: int = 1, onboard: int = 16) -> Demo:
    """Demo data through the CLI, the device API (real onboarding) and the store. `scale`
    multiplies the registered devices (1: about 300)."""
    from host.server.store import Store

    tenant = "acme"
    for t in (tenant, "globex", "initech"):
        server.ensure_tenant(t)
    root = server.root_der()
    plan = {  # batch -> (tenant, devices)
        "line-a-2026w14": (tenant, 160 * scale),
        "line-b-2026w15": (tenant, 90 * scale),
        "pilot": (tenant, 24),
        "eval-kit": ("globex", 30),
    }
    sims: dict[str, list[SimDevice]] = {}
    jobs: list[Callable[[], Any]] = []
    for batch, (owner, n) in plan.items():
        sims[batch] = [SimDevice(server.api_url, root) for _ in range(n)]
        path = server.data_dir / f"{batch}.csv"
        path.write_text("\n".join(d.csv_line() for d in sims[batch]) + "\n")

        def made(batch: str = batch, owner: str = owner, path: Path = path) -> None:
            _cli(server, "batch", "create", batch, "--tenant", owner)
            _cli(server, "batch", "import", batch, str(path))

        jobs.append(made)
    operator, viewer = "olivia.operator", "victor.viewer"
    for name, role in ((operator, "operator"), (viewer, "viewer")):

        def user(name: str = name, role: str = role) -> None:
            args = ("user", "create", name, "--role", role, "--tenant", tenant)
            _cli(server, *args, "--password-stdin", stdin=PASSWORD + "\n")

        jobs.append(user)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        for f in [pool.submit(j) for j in jobs]:
            f.result()

    # Real onboarding (hello + proof over HTTPS) of the pilot batch and some of line A. The
    # pilot's devices send an OTA key, as OTA-capable agents do, all but every eighth: the
    # rollout below refuses those as no_ota_key.
    onboarded = sims["pilot"][:onboard] + sims["line-a-2026w14"][:onboard]
    pilot_ids = {sim.device_id for sim in sims["pilot"][:onboard]}
    for i, sim in enumerate(onboarded):
        with_key = sim.device_id in pilot_ids and i % 8 != 7
        sim.onboard(ota_key=_ota_key() if with_key else None)
    store = Store(server.data_dir / "registry.sqlite", migrate=False)
    try:
        now = time.time()
        for i, sim in enumerate(onboarded):
            fw = "0.1.0" if i % 3 else "0.1.1"
            samples = 40 if i < 4 else 3
            for seq in range(1, samples + 1):
                at = now - (samples - seq) * 30
                body = {
                    "seq": seq,
                    "uptime_ms": seq * 30_000,
                    "mem_free": 61_000 - (seq * 37 % 900) - i * 50,
                    "fw": fw,
                }
                store.devices.record_telemetry(sim.device_id, body, at, tenant)
            for k in range(6 if i < 4 else 1):
                margin = 40 - k * (3 if i == 1 else 1)
                health = {"margin": margin, "corrected_bits": 2 + k, "health_failures": 0}
                store.puf.record(sim.device_id, now - (6 - k) * 3600, health)
            if i % 2 == 0:
                store.devices.set_online(sim.device_id, True, now)
    finally:
        store.close()
    pilot = sims["pilot"]
    for sim in pilot[-3:]:
        _cli(server, "device", "revoke", sim.device_id)
    _cli(server, "device", "disable", pilot[-4].device_id)
    for sim in pilot[:2]:
        _cli(server, "device", "command", sim.device_id, "ping")
    release, rollout = _release_and_rollout(server)
    _rollout_progress(server, release, rollout)
    return Demo(
        operator=operator,
        viewer=viewer,
        tenant=tenant,
        batch="pilot",
        device=pilot[0].device_id,
        rollout=rollout,
        counts={b: len(s) for b, s in sims.items()},
    )


def _ota_key() -> bytes:
    """A fresh OTA public key, as an agent derives one (its private half is not needed here)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    return pubkey_bytes(ec.generate_private_key(ec.SECP256R1()).public_key())


# What the offered devices of the demo rollout have reported, in order: most updated, some on
# the way, one rolled back (the rollout allows 2 failures, so it stays active).
_PROGRESS = (
    ("committed", None),
    ("committed", None),
    ("trial", None),
    ("committed", None),
    ("rolled_back", "trial_failed"),
    ("downloading", None),
    ("committed", None),
    ("staged", None),
)


def _rollout_progress(server: ServerProcess, release: str, rollout: int) -> None:
    """The devices' `ota` events, applied as the server's event intake applies them, one
    step after another (the demo's devices are not connected to the broker); the offered
    devices past _PROGRESS stay offered."""
    from host.server.store import Store
    from host.server.store.audit import Actor

    path = ("downloading", "staged", "trial")
    store = Store(server.data_dir / "registry.sqlite", migrate=False)
    try:
        offered = [d.device_id for d in store.rollouts.devices(rollout) if d.state == "offered"]
        for device_id, (state, reason) in zip(offered, _PROGRESS, strict=False):
            actor = Actor(f"device:{device_id}", "broker")
            steps = path[: path.index(state) + 1] if state in path else path
            for step in steps:
                store.rollouts.advance(release, device_id, step, None, actor, rollout_id=rollout)
            if state not in path:
                store.rollouts.advance(release, device_id, state, reason, actor, rollout_id=rollout)
    finally:
        store.close()


def _release_and_rollout(server: ServerProcess) -> tuple[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "unix-0.2.0.qota"
        _cli(
            server,
            *("ota", "build", "-", "--version", "0.2.0", "--board", "unix"),
            *("--min-version", "0.0.0", "--out", str(out)),
        )
        release = json.loads(_cli(server, "ota", "publish", str(out), "--json"))["id"]
    create = ("ota", "rollout", "create", str(release), "--batch", "pilot")
    doc = json.loads(_cli(server, *create, "--max-failures", "2", "--json"))
    return str(release), int(doc["id"])


def pages(demo: Demo) -> list[tuple[str, str]]:
    """(name, path) of every page a signed-in user sees; the login and 403 pages are apart."""
    out = [
        ("dashboard", "/console/"),
        ("tenants", "/console/tenants"),
        ("batches", "/console/batches"),
        ("batch", f"/console/batches/{demo.batch}"),
        ("devices", "/console/devices"),
        ("device", f"/console/devices/{demo.device}"),
        ("ota", "/console/ota"),
    ]
    if demo.rollout is not None:
        out.append(("rollout", f"/console/ota/rollouts/{demo.rollout}"))
    out.append(("audit", "/console/audit"))
    return out


def sign_in(page: Any, name: str, password: str = PASSWORD) -> None:
    page.goto("/console/login")
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(password)
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in").click()
    if "/console/login" in page.url:
        raise ScreenshotError(f"login as {name} failed: {page.inner_text('main')[:200]}")


def refused_page(page: Any) -> None:
    """Show the 403 page: the batches form sent without its CSRF token."""
    page.goto("/console/batches")
    form = page.locator('form[action="/console/batches"]')
    form.get_by_label("Name").fill("never-made")
    form.locator('input[name="csrf"]').evaluate("el => el.remove()")
    # The browser logs the refusal's status a moment after the page: wait for that message too,
    # so a caller that expects it is still expecting it when it comes.
    with (
        page.expect_console_message(lambda m: "status of 403" in m.text),
        page.expect_navigation(),
    ):
        form.get_by_role("button", name="Create batch").click()


class Errors:
    """Console errors and page errors per page name."""

    def __init__(self) -> None:
        self.current = "?"
        self.allowed = ""
        self.by_page: dict[str, list[str]] = {}

    def watch(self, page: Any) -> None:
        def record(kind: str, text: str, url: str = "") -> None:
            if self.allowed and self.allowed in text:
                return
            self.by_page.setdefault(self.current, []).append(f"[{kind}] {url} {text}")

        def console(m: Any) -> None:
            if m.type == "error":
                record("console", m.text, m.location.get("url", ""))

        page.on("console", console)
        page.on("pageerror", lambda e: record("pageerror", str(e)))


@dataclass
class Shot:
    name: str
    width: int
    path: Path
    sideways: bool


def shoot(server: ServerProcess, demo: Demo, out: Path) -> tuple[list[Shot], Errors]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    shots: list[Shot] = []
    errors = Errors()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            for vp in WIDTHS:
                ctx = browser.new_context(
                    base_url=server.api_url,
                    ignore_https_errors=True,
                    viewport={"width": vp["width"], "height": vp["height"]},
                )
                ctx.on("page", errors.watch)
                page = ctx.new_page()

                def snap(name: str, page: Any = page, vp: dict[str, int] = vp) -> None:
                    page.wait_for_load_state("load")
                    path = out / f"{name}-{vp['width']}.png"
                    page.screenshot(path=str(path), full_page=True)
                    shots.append(Shot(name, vp["width"], path, bool(page.evaluate(SIDEWAYS_JS))))

                errors.current = "login"
                page.goto("/console/login")
                snap("login")
                sign_in(page, demo.operator)
                for name, path in pages(demo):
                    errors.current = name
                    page.goto(path)
                    snap(name)
                errors.current, errors.allowed = "403", "status of 403"
                refused_page(page)
                snap("403")
                errors.allowed = ""
                ctx.close()
        finally:
            browser.close()
    return shots, errors


@dataclass
class Running:
    server: ServerProcess
    demo: Demo


@contextlib.contextmanager
def running(data: Path, **seed_kw: Any) -> Iterator[Running]:
    server = ServerProcess(data).start()
    try:
        yield Running(server, seed(server, **seed_kw))
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT, help="where the PNGs go")
    ap.add_argument("--scale", type=int, default=1, help="multiply the demo's device count")
    args = ap.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"screenshots: {CHROMIUM} is missing; run make setup", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="qlink-shots-") as tmp:
        started = time.monotonic()
        with running(Path(tmp) / "data", scale=args.scale) as run:
            print(f"screenshots: demo data seeded in {time.monotonic() - started:.0f} s")
            try:
                shots, errors = shoot(run.server, run.demo, args.out)
            except Exception as e:  # a page that could not be shown is named by the check
                print(f"screenshots: FAILED while on page: {e}", file=sys.stderr)
                print(run.server.log_tail(), file=sys.stderr)
                return 1
    failed = False
    for s in shots:
        print(f"  {s.path}")
        if s.sideways and s.width <= 390:
            print(f"screenshots: page {s.name} scrolls sideways at {s.width} px", file=sys.stderr)
            failed = True
    for name, lines in errors.by_page.items():
        for line in lines:
            print(f"screenshots: page {name} logged a console error: {line}", file=sys.stderr)
        failed = True
    print(f"screenshots: {len(shots)} written to {args.out}" + (" (FAILED)" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
