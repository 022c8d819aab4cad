"""The console in a real browser (Debian's chromium, headless, through Playwright) against the
real server, its broker and an emulated board running the firmware: the operator's whole story
from docs/console.md "Tests and screenshots", and the refusals a browser can provoke."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from playwright.sync_api import expect

from hil.emulated import EmulatedBoard
from hil.serverproc import ServerProcess

if TYPE_CHECKING:  # the fixtures come in as a plugin (imported once, by pytest)
    from console_browser import ConsoleWeb, Credentials

pytest_plugins = ["console_browser"]
pytestmark = pytest.mark.e2e

ROWS = 300  # identities in the imported file besides the board's
BAD_LINE = 7


def identity_line() -> str:
    """`device_id,public_key` of a fresh P-256 key (the CSV the factory writes)."""
    pub = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    return f"{hashlib.sha256(pub).hexdigest()},{pub.hex()}"


def batch_devices(server: ServerProcess, batch: str) -> int:
    rows = server.query(
        "SELECT count(*) FROM devices d JOIN batches b ON d.batch_id = b.id "
        f"WHERE b.name = '{batch}'"
    )
    return int(rows[0][0])


def device_state(server: ServerProcess, device_id: str) -> str:
    rows = server.query(f"SELECT state FROM devices WHERE device_id = '{device_id}'")
    return str(rows[0][0])


@pytest.fixture(scope="module")
def board(
    server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[EmulatedBoard, concurrent.futures.Future[dict[str, str]]]]:
    """An emulated board flashed for this server; its factory enrolment runs in the background
    (mpy-cross and the P-256 key take seconds) while the browser signs in and makes the batch."""
    b = EmulatedBoard(tmp_path_factory.mktemp("console-board"), "console")

    def prepare() -> dict[str, str]:
        b.flash(
            {"server": server.api_url, "root_ca": "ca.der", "telemetry_interval_ms": 500},
            server.root_der(),
        )
        return b.enrol()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        yield b, pool.submit(prepare)
        b.close()


def _import(page: Any, path: Path) -> None:
    page.set_input_files("#import-file", str(path))
    page.get_by_role("button", name="Import").click()


def _stays(page: Any) -> None:
    """Mark the document: a reload or navigation would lose the mark."""
    page.evaluate("() => { window.__notReloaded = true; }")


def _stayed(page: Any) -> bool:
    return bool(page.evaluate("() => window.__notReloaded === true"))


def test_operator_story_in_the_browser(
    server: ServerProcess,
    console_web: ConsoleWeb,
    operator: Credentials,
    viewer: Credentials,
    board: tuple[EmulatedBoard, concurrent.futures.Future[dict[str, str]]],
    tmp_path: Path,
) -> None:
    emulated, enrolment = board
    batch = f"web-{os.getpid()}"

    # Sign in through the form: the dashboard of the operator's tenant.
    page = console_web.signed_in(operator)
    expect(page.get_by_role("heading", name="Dashboard", exact=True)).to_be_visible()

    # Create a batch through the batches page.
    page.goto("/console/batches")
    page.get_by_label("Name").fill(batch)
    with page.expect_navigation():
        page.get_by_role("button", name="Create batch").click()
    assert page.url.endswith(f"/console/batches/{batch}"), page.url
    expect(page.locator(".flash-ok")).to_contain_text(f"Batch {batch} created")

    # A file with one bad row: the page names the row and nothing is stored.
    lines = [identity_line() for _ in range(ROWS)]
    bad = list(lines)
    bad[BAD_LINE - 1] = lines[BAD_LINE - 1].split(",")[0] + ",04deadbeef"
    bad_file = tmp_path / "bad.csv"
    bad_file.write_text("\n".join(bad) + "\n")
    _import(page, bad_file)
    expect(page.locator(".import-status")).to_contain_text("1 bad row")
    expect(page.locator(".import-rows li")).to_have_count(1)
    expect(page.locator(".import-rows li")).to_contain_text(f"line {BAD_LINE}:")
    assert batch_devices(server, batch) == 0

    # The good file, with the board's identity: progress reaches the total.
    ident = enrolment.result(timeout=180)
    device_id = ident["device_id"]
    good_file = tmp_path / "good.csv"
    good_file.write_text("\n".join([*lines, f"{device_id},{ident['public_key']}"]) + "\n")
    _import(page, good_file)
    total = ROWS + 1
    expect(page.locator(".import-status")).to_contain_text(f"{total} device(s) imported")
    value, top = page.eval_on_selector(".import-progress", "b => [b.value, b.max]")
    assert (value, top) == (total, total)
    assert batch_devices(server, batch) == total

    # The device list (a second tab, left open to watch) and the device's page.
    watch = page.context.new_page()
    watch.goto(f"/console/devices?batch={batch}&q={device_id[:16]}")
    row = watch.locator(f'tr[data-device="{device_id}"]')
    expect(row.locator('[data-field="state"]')).to_contain_text("registered")
    _stays(watch)
    page.goto(f"/console/devices?q={device_id[:16]}")
    with page.expect_navigation():
        page.locator(f'a[href="/console/devices/{device_id}"]').click()
    assert page.url.endswith(f"/console/devices/{device_id}"), page.url
    facts = page.locator("[data-device-page]")
    expect(facts.locator('[data-field="online"]')).to_have_text("offline")
    _stays(page)

    # Power the board on: it onboards, and both tabs show it online without a reload.
    emulated.power_on()
    expect(facts.locator('[data-field="online"]')).to_have_text("online", timeout=120_000)
    expect(facts.locator('[data-field="state"]')).to_have_text("onboarded")
    expect(row.locator('[data-field="online"]')).to_have_text("online")
    # Its telemetry arrives: rows appended to the table and dots to the chart, live.
    telemetry = page.locator('table[data-table="telemetry"] tbody tr')
    seen = telemetry.count()
    deadline = time.monotonic() + 20
    while telemetry.count() < seen + 2:
        assert time.monotonic() < deadline, "no telemetry reached the device page"
        page.wait_for_timeout(250)
    assert page.locator('svg[data-chart="telemetry"] [data-dots] circle').count() >= 2
    # The script redrew the time axis as the server draws it (the far end: the clock alone,
    # unless the messages span midnight UTC).
    t_max = page.locator('svg[data-chart="telemetry"] [data-axis="t-max"]').text_content()
    assert re.fullmatch(r"(\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d", t_max or ""), t_max
    expect(facts.locator('[data-field="last_seen"]')).not_to_have_text("-")
    assert _stayed(page) and _stayed(watch)

    # A viewer sees no revoke button, and a POST to the revoke URL with the viewer's
    # session and token is refused: the device is unchanged.
    vpage = console_web.signed_in(viewer)
    vpage.goto(f"/console/devices/{device_id}")
    expect(vpage.locator("[data-device-page]")).to_be_visible()
    expect(vpage.locator('form[action$="/revoke"]')).to_have_count(0)
    expect(vpage.get_by_role("button", name="Revoke")).to_have_count(0)
    token = vpage.locator('meta[name="csrf"]').get_attribute("content")
    refused = vpage.request.post(
        f"/console/devices/{device_id}/revoke", form={"csrf": token or "", "confirm": "yes"}
    )
    assert refused.status == 403, refused.text()
    assert device_state(server, device_id) == "onboarded"

    # Revoke through the page's form: without the confirmation ticked the browser does not
    # send it; ticked, the device is revoked and the open list shows it offline, live.
    revoke = page.locator('form[action$="/revoke"]')
    revoke.get_by_role("button", name="Revoke").click()
    page.wait_for_timeout(300)
    assert _stayed(page), "the revoke form was sent without its confirmation"
    assert device_state(server, device_id) == "onboarded"
    revoke.get_by_label("I understand: revoke this device").check()
    with page.expect_navigation():
        revoke.get_by_role("button", name="Revoke").click()
    expect(page.locator(".flash-ok")).to_contain_text("Device revoked.")
    expect(facts.locator('[data-field="state"]')).to_have_text("revoked")
    assert device_state(server, device_id) == "revoked"
    expect(row.locator('[data-field="state"]')).to_have_text("revoked", timeout=15_000)
    expect(row.locator('[data-field="online"]')).to_have_text("offline", timeout=15_000)
    assert _stayed(watch)
    console_web.assert_clean()


def test_a_form_without_its_csrf_token_is_refused(
    server: ServerProcess, console_web: ConsoleWeb, operator: Credentials
) -> None:
    page = console_web.signed_in(operator)
    page.goto("/console/batches")
    name = f"no-csrf-{os.getpid()}"
    page.get_by_label("Name").fill(name)
    form = page.locator('form[action="/console/batches"]')
    form.locator('input[name="csrf"]').evaluate("el => el.remove()")
    # The browser logs the refused page's status a moment after the answer: the expectation
    # lasts until that message has come.
    with (
        console_web.expecting(r"status of 403"),
        page.expect_console_message(lambda m: "status of 403" in m.text),
        page.expect_response(lambda r: r.request.method == "POST") as answer,
    ):
        form.get_by_role("button", name="Create batch").click()
    assert answer.value.status == 403
    page.wait_for_load_state()
    expect(page.get_by_role("heading", level=1)).to_be_visible()
    assert not server.query(f"SELECT id FROM batches WHERE name = '{name}'")
