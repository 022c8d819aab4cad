"""The console's live pages in a real browser (Debian's chromium through Playwright) on the real
server (docs/console.md "Live updates"): a rollout's page follows a device's step in the store
(its counts and its row), the dashboard follows devices imported into the tenant (its total),
and the device list follows a change of more devices than its stream can queue (a resync), each
without a reload and without a console error.

The state is changed in the server's own database, through the store, from this process: the
server's feed sees it as it sees the event intake's and the CLI's writes. Each module run uses a
tenant of its own, so the counts it reads are exact."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from playwright.sync_api import expect

from hil.serverproc import ServerProcess
from host.server.console.live import QUEUE_SIZE
from host.server.deviceid import device_id_of
from host.server.store import Actor, Store

if TYPE_CHECKING:  # the fixtures come in as a plugin (imported once, by pytest)
    from console_browser import ConsoleWeb, Credentials

pytest_plugins = ["console_browser"]
pytestmark = pytest.mark.e2e

TEST = Actor("test", "local")
LIVE_MS = 6_000  # the feed reads once a second, the counts at most every 2 s
DEVICES = 3
_serial = itertools.count(1)


def identity() -> tuple[str, str]:
    """A new device's (ID, public key hex)."""
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    return device_id_of(point), point.hex()


def csv_text(rows: list[tuple[str, str]]) -> str:
    return "".join(f"{d},{k}\n" for d, k in rows)


@dataclass
class Seeded:
    tenant: str
    batch: str
    release: str
    rollout: int
    devices: list[str]
    operator: Credentials


@pytest.fixture(scope="module")
def store(server: ServerProcess) -> Iterator[Store]:
    """The running server's own database (migrated by the server already)."""
    s = Store(server.database_url or server.data_dir / "registry.sqlite", migrate=False)
    yield s
    s.close()


def publish_release(server: ServerProcess, tmp: Path) -> str:
    """A small release of the unix board, built and published with the `qlink` CLI; its ID."""
    # Each part at most 65535 (otamanifest.parse_version); new for each run of the module.
    version = f"7.{os.getpid() % 10_000}.{int(time.time()) % 65_536}"
    tree = tmp / "tree"
    (tree / "agent").mkdir(parents=True)
    (tree / "agent" / "version.py").write_text(f'VERSION = "{version}"\n')
    (tree / "main.py").write_text("# a test release\n")
    bundle = tmp / f"unix-{version}.qota"
    server.cli(
        "ota", "build", str(tree), "--version", version, "--board", "unix", "--out", str(bundle)
    )
    server.cli("ota", "publish", str(bundle))
    return f"unix-{version}"


@pytest.fixture(scope="module")
def seeded(server: ServerProcess, store: Store, tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    """A tenant of its own with an operator, a batch of onboarded devices (OTA keys set, as a
    proof leaves them) and an active rollout of a new release offered to all of them."""
    from console_browser import make_user

    tenant = f"live{os.getpid() % 10_000}x{int(time.time() * 1000) % 10**6}"
    operator = make_user(server, "operator", tenant)  # creates the tenant too
    batch = f"live-{next(_serial)}"
    store.batches.create(batch, tenant, None, TEST)
    rows = [identity() for _ in range(DEVICES)]
    store.batches.import_devices(batch, csv_text(rows), tenant=tenant, actor=TEST)
    for device_id, _key in rows:
        _, ota_point = identity()
        store.db.write_one(
            "UPDATE devices SET state = 'onboarded', onboarded_at = :now, ota_key = :k"
            " WHERE device_id = :d",
            {"now": time.time(), "k": bytes.fromhex(ota_point), "d": device_id},
        )
    release = publish_release(server, tmp_path_factory.mktemp("live-release"))
    devices = sorted(d for d, _ in rows)
    found = store.rollouts.batch(batch, tenant)
    rollout = store.rollouts.create(
        release_id=release,
        batch_id=int(found["id"]),
        batch=batch,
        tenant=tenant,
        percent=100,
        max_failures=0,
        offered=devices,
        no_key=[],
        actor=TEST,
    )
    return Seeded(tenant, batch, release, rollout, devices, operator)


def mark_page(page: Any) -> None:
    """A mark on the document that a reload or a navigation would lose."""
    page.evaluate("() => { window.__stayed = true; }")


def still_same_page(page: Any) -> bool:
    return bool(page.evaluate("() => window.__stayed === true"))


# Run before the page's own scripts: each EventSource marks the window once it is open, and
# counts its openings and the resync events it gets.
WATCH_OPEN_JS = """
(() => {
  const Plain = window.EventSource;
  if (!Plain) return;
  window.__liveOpens = 0;
  window.__resyncs = 0;
  window.EventSource = function (url, init) {
    const source = new Plain(url, init);
    source.addEventListener("open", () => { window.__liveOpen = true; window.__liveOpens++; });
    source.addEventListener("resync", () => { window.__resyncs++; });
    return source;
  };
  window.EventSource.prototype = Plain.prototype;
})();
"""


def signed_in(web: ConsoleWeb, who: Credentials) -> Any:
    page = web.signed_in(who)
    page.add_init_script(WATCH_OPEN_JS)
    return page


def wait_until_listening(page: Any) -> None:
    """Until the page's stream is open, so that the change below reaches it as an event (one
    made before would come with the first read made for it)."""
    page.wait_for_function("() => window.__liveOpen === true", timeout=LIVE_MS)


def test_a_rollout_page_follows_a_devices_step_without_a_reload(
    console_web: ConsoleWeb, seeded: Seeded, store: Store
) -> None:
    page = signed_in(console_web, seeded.operator)
    page.goto(f"/console/ota/rollouts/{seeded.rollout}")
    cards = page.locator('section[aria-label="Devices by update state"]')
    expect(cards.locator('[data-count="offered"]')).to_have_text(str(DEVICES))
    expect(cards.locator('[data-count="downloading"]')).to_have_text("0")
    moved = seeded.devices[1]
    row = page.locator(f'tr[data-device="{moved}"]')
    expect(row.locator('[data-field="state"]')).to_have_text("offered")
    mark_page(page)
    wait_until_listening(page)

    # The device asks for the release's head (the device API moves it to downloading).
    device = Actor(f"device:{moved}", "device-api")
    assert store.rollouts.advance(seeded.release, moved, "downloading", None, device)
    expect(cards.locator('[data-count="downloading"]')).to_have_text("1", timeout=LIVE_MS)
    expect(cards.locator('[data-count="offered"]')).to_have_text(str(DEVICES - 1))
    state = row.locator('[data-field="state"]')
    expect(state).to_have_text("downloading")
    expect(state).to_have_class("badge badge-downloading")
    expect(row.locator('[data-field="updated"]')).to_have_text("now")
    other = page.locator(f'tr[data-device="{seeded.devices[0]}"] [data-field="state"]')
    expect(other).to_have_text("offered")

    # Its event says it committed (the event intake's step).
    device = Actor(f"device:{moved}", "broker")
    assert store.rollouts.advance(seeded.release, moved, "committed", None, device)
    expect(cards.locator('[data-count="committed"]')).to_have_text("1", timeout=LIVE_MS)
    expect(cards.locator('[data-count="downloading"]')).to_have_text("0")
    expect(state).to_have_text("committed")
    expect(page.locator("[data-rollout-state]")).to_have_text("active")
    expect(page.locator("[data-live-status]")).to_have_text("")
    assert still_same_page(page)
    console_web.assert_clean()


def test_the_dashboard_total_follows_devices_imported_without_a_reload(
    console_web: ConsoleWeb, seeded: Seeded, store: Store
) -> None:
    page = signed_in(console_web, seeded.operator)
    page.goto("/console/")
    cards = page.locator('[data-live="summary"]')
    total = cards.locator('[data-count="total"]')
    expect(total).to_have_text(str(DEVICES))
    registered = cards.locator('[data-count="registered"]')
    expect(registered).to_have_text("0")
    mark_page(page)
    wait_until_listening(page)

    rows = [identity() for _ in range(2)]
    store.batches.import_devices(seeded.batch, csv_text(rows), tenant=seeded.tenant, actor=TEST)
    expect(total).to_have_text(str(DEVICES + 2), timeout=LIVE_MS)
    expect(registered).to_have_text("2")
    expect(cards.locator('[data-count="onboarded"]')).to_have_text(str(DEVICES))
    assert still_same_page(page)
    console_web.assert_clean()


def test_the_device_list_follows_a_change_of_more_devices_than_its_stream_queues(
    console_web: ConsoleWeb, seeded: Seeded, store: Store
) -> None:
    """One transaction changes more devices than a console's queue holds: the stream sends a
    resync instead of dropping the console, and the page reads its rows again, in place."""
    bulk = f"bulk-{next(_serial)}"
    store.batches.create(bulk, seeded.tenant, None, TEST)
    rows = [identity() for _ in range(QUEUE_SIZE + 44)]
    store.batches.import_devices(bulk, csv_text(rows), tenant=seeded.tenant, actor=TEST)
    page = signed_in(console_web, seeded.operator)
    page.goto(f"/console/devices?batch={bulk}")
    shown = page.locator('table[data-live="devices"] tr[data-device] [data-field="state"]')
    expect(shown).to_have_count(50)
    expect(shown.first).to_contain_text("registered")
    mark_page(page)
    wait_until_listening(page)
    # The import may still be in the feed's overlap window: more than a queue at the join is
    # one resync too. Counted from when that has settled.
    page.wait_for_timeout(2_500)
    before = page.evaluate("() => window.__resyncs")

    now = time.time()
    changed = store.db.write_one(
        "UPDATE devices SET state = 'onboarded', onboarded_at = :now, changed_at = :now"
        " WHERE batch_id = (SELECT id FROM batches WHERE name = :batch AND tenant = :tenant)",
        {"now": now, "batch": bulk, "tenant": seeded.tenant},
    )
    assert changed == len(rows)
    for n in range(50):
        expect(shown.nth(n)).to_contain_text("onboarded", timeout=LIVE_MS)
    assert page.evaluate("() => window.__resyncs") > before
    assert page.evaluate("() => window.__liveOpens") == 1  # the stream was never dropped
    assert still_same_page(page)
    console_web.assert_clean()
