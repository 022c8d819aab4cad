"""The device pages (docs/console.md "Pages"): the list's filters, ID-prefix search and keyset
pages; a device's page with its real certificate, telemetry chart, PUF health, commands and
audit trail; its actions for an operator, refused for a viewer and without the CSRF token;
another tenant's device does not exist; names are escaped."""

from __future__ import annotations

import html
import re
import time
from typing import Any

import pytest
from cryptography import x509
from devicefixtures import add_telemetry, new_batch, onboarded, registered

from host.server.console.web import axis_time, utc

ROW = re.compile(r'<tr data-device="([0-9a-f]{64})">')
NEXT = re.compile(r'<a href="(/console/devices\?[^"]*)" rel="next">Next</a>')


def ids_on(page: str) -> list[str]:
    return ROW.findall(page)


def device(console: Any, device_id: str, tenant: str = "acme") -> Any:
    return console.store.devices.get(device_id, tenant)


# -- the list ----------------------------------------------------------------------------------
def test_list_filters_by_batch_state_and_firmware(console: Any, console_as: Any) -> None:
    batch = new_batch(console)
    plain = registered(console, batch, 3)
    live = onboarded(console, batch).device_id
    console.sql("UPDATE devices SET fw = '9.9.1-test' WHERE device_id = :d", {"d": live})
    c = console_as("viewer")

    r = c.get("/console/devices", params={"batch": batch})
    assert r.status_code == 200, r.text
    assert ids_on(r.text) == sorted([*plain, live])
    assert f'<option value="{batch}" selected>' in r.text

    r = c.get("/console/devices", params={"batch": batch, "state": "onboarded"})
    assert ids_on(r.text) == [live]
    r = c.get("/console/devices", params={"batch": batch, "state": "registered"})
    assert ids_on(r.text) == plain

    r = c.get("/console/devices", params={"fw": "9.9.1-test"})
    assert '<option value="9.9.1-test" selected>' in r.text
    assert ids_on(r.text) == [live]
    # Each row says its state, presence, firmware and times (UTC), for the script to update.
    row = r.text.split(f'data-device="{live}"')[1].split("</tr>")[0]
    assert 'data-field="state"><span class="badge badge-onboarded">onboarded' in row
    assert 'data-field="online"' in row and 'data-field="fw">9.9.1-test<' in row
    assert 'data-field="last_seen"' in row and "UTC" in row
    assert f'title="{live}">{live[:12]}…</a>' in row
    assert '<script src="/console/static/devices.js" defer></script>' in r.text


def test_list_never_shows_another_tenants_devices(console: Any, console_as: Any) -> None:
    foreign = registered(console, new_batch(console, "globex"), 2, "globex")
    r = console_as("viewer").get("/console/devices", params={"q": foreign[0][:16]})
    assert r.status_code == 200
    assert ids_on(r.text) == []
    assert "No devices match." in r.text


def test_prefix_search_finds_by_the_start_of_the_id(console: Any, console_as: Any) -> None:
    batch = new_batch(console)
    ids = registered(console, batch, 5)
    c = console_as("viewer")
    for typed in (ids[2][:10], ids[2][:10].upper(), ids[2]):
        r = c.get("/console/devices", params={"q": typed})
        assert r.status_code == 200, r.text
        assert ids_on(r.text) == [ids[2]]
    r = c.get("/console/devices", params={"q": ids[2][:1], "batch": batch})
    assert ids_on(r.text) == [i for i in ids if i.startswith(ids[2][:1])]


@pytest.mark.parametrize(
    ("query", "sentence"),
    [
        ({"q": "xyz"}, "search a device by the start of its ID: 1 to 64 hexadecimal characters"),
        ({"q": "a" * 65}, "search a device by the start of its ID"),
        ({"q": "<script>"}, "search a device by the start of its ID"),
        ({"state": "sleeping"}, "state must be one of registered, onboarded, revoked, disabled"),
        ({"after": "not-an-id"}, "after must be a device ID"),
    ],
)
def test_a_bad_filter_is_an_inline_error(
    console_as: Any, query: dict[str, str], sentence: str
) -> None:
    r = console_as("viewer").get("/console/devices", params=query)
    assert r.status_code == 400
    assert 'class="flash flash-error" role="alert"' in r.text
    assert sentence in html.unescape(r.text)
    assert ids_on(r.text) == []
    assert "<script>" not in r.text.split("<main", 1)[1].replace(
        '<script src="/console/static/devices.js" defer></script>', ""
    )
    assert 'aria-invalid="true"' in r.text or "q" not in query


def test_keyset_pages_walk_every_device_once(console: Any, console_as: Any) -> None:
    batch = new_batch(console, stem="paging")
    ids = registered(console, batch, 120)
    c = console_as("viewer")
    seen: list[str] = []
    url: str | None = f"/console/devices?batch={batch}"
    pages = 0
    while url is not None:
        r = c.get(url)
        assert r.status_code == 200, r.text
        page = ids_on(r.text)
        assert len(page) <= 50
        seen += page
        pages += 1
        if pages > 1:  # a later page links back to the first, with the filters
            first = html.unescape(re.search(r'<a href="([^"]*)">First page</a>', r.text)[1])  # type: ignore[index]
            assert first == f"/console/devices?batch={batch}"
        m = NEXT.search(r.text)
        url = html.unescape(m[1]) if m else None
        if url is not None:
            assert f"batch={batch}" in url and f"after={page[-1]}" in url
    assert pages == 3
    assert seen == ids  # in ID order, none twice, none missing


def test_list_escapes_a_hostile_batch_name(console: Any, console_as: Any) -> None:
    batch = new_batch(console, stem="evil")
    ids = registered(console, batch, 1)
    hostile = "<script>alert(1)</script>\"'&"
    # Records made before the name rule may hold any name (host/server/store/names.py).
    console.sql("UPDATE batches SET name = :n WHERE name = :b", {"n": hostile, "b": batch})
    c = console_as("viewer")
    for path in ("/console/devices", f"/console/devices/{ids[0]}"):
        r = c.get(path, params={"q": ids[0]} if path == "/console/devices" else None)
        assert r.status_code == 200, r.text
        assert "<script>alert(1)</script>" not in r.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text


# -- one device --------------------------------------------------------------------------------
def test_another_tenants_device_and_a_bad_id_are_not_found(console: Any, console_as: Any) -> None:
    foreign = registered(console, new_batch(console, "globex"), 1, "globex")[0]
    c = console_as("operator")
    for path in (
        f"/console/devices/{foreign}",
        "/console/devices/zz",
        f"/console/devices/{'0' * 64}",
    ):
        r = c.get(path)
        assert r.status_code == 404, path
        assert "does not exist" in r.text
    r = c.post_form(f"/console/devices/{foreign}/disable")
    assert r.status_code == 404
    assert device(console, foreign, "globex").disabled is False


def test_device_page_shows_the_real_certificate_chain(console: Any, console_as: Any) -> None:
    batch = new_batch(console)
    d = onboarded(console, batch)
    rec = device(console, d.device_id)
    cert = x509.load_der_x509_certificate(rec.cert_der)
    r = console_as("viewer").get(f"/console/devices/{d.device_id}")
    assert r.status_code == 200, r.text
    text = r.text
    for heading in (
        "Identity",
        "Certificate",
        "Telemetry",
        "PUF health",
        "Commands",
        "Audit trail",
    ):
        assert f">{heading}</h2>" in text
    assert d.device_id in text and batch in text and "acme" in text
    device_row = text.split('data-cert="device"')[1].split("</tr>")[0]
    assert f'data-field="serial">{cert.serial_number:X}<' in device_row
    assert utc(cert.not_valid_after_utc.timestamp()) in device_row
    days = (cert.not_valid_after_utc.timestamp() - time.time()) // 86400
    assert f">{int(days)}<" in device_row
    assert "issuing CA" in text and "root CA" in text
    assert html.escape(cert.issuer.rfc4514_string()) in text
    # The onboarding is in its audit trail.
    assert "device.onboard" in text or "onboard" in text.split(">Audit trail</h2>")[1]
    assert " style=" not in text


def test_telemetry_chart_draws_the_stored_messages(console: Any, console_as: Any) -> None:
    d = onboarded(console, new_batch(console))
    t0 = 1_800_000_000.0
    samples: list[tuple[float, dict[str, object]]] = [
        (
            t0 + 60 * i,
            {"seq": i + 1, "uptime_ms": 1000 * i, "mem_free": 50_000 + 1000 * i, "fw": "1.2.3"},
        )
        for i in range(5)
    ]
    add_telemetry(console, d.device_id, samples)
    r = console_as("viewer").get(f"/console/devices/{d.device_id}")
    assert r.status_code == 200, r.text
    svg = r.text.split('<svg class="chart-svg"')[1].split("</svg>")[0]
    assert 'data-series="mem_free"' in svg
    assert '<title id="chart-title">mem_free over time</title>' in svg
    assert "5 telemetry messages from" in svg and utc(t0) in svg
    points = re.search(r'data-line="telemetry" points="([^"]*)"', svg)[1].split()  # type: ignore[index]
    assert len(points) == 5
    xs = [float(p.split(",")[0]) for p in points]
    ys = [float(p.split(",")[1]) for p in points]
    assert xs == sorted(xs) and ys == sorted(ys, reverse=True)  # time right, memory up
    assert svg.count("<circle") == 5
    assert ">54000<" in svg and ">50000<" in svg  # the axis labels
    # The time axis (its title says UTC): the far end gives only the clock on the same day.
    first, last = time.gmtime(t0), time.gmtime(t0 + 240)
    assert f'data-axis="t-min">{time.strftime("%Y-%m-%d %H:%M:%S", first)}<' in svg
    assert f'data-axis="t-max">{time.strftime("%H:%M:%S", last)}<' in svg
    table = r.text.split('data-table="telemetry"')[1].split("</table>")[0]
    assert table.count("<tr>") == 1 + 5 and "54000" in table
    # The other series is one choice away.
    r = console_as("viewer").get(f"/console/devices/{d.device_id}", params={"series": "uptime_ms"})
    assert 'data-series="uptime_ms"' in r.text


def test_a_chart_axis_names_the_day_again_only_when_it_changes() -> None:
    noon = 1_800_000_000.0 - 1_800_000_000.0 % 86400 + 43200
    assert axis_time(noon) == time.strftime("%Y-%m-%d 12:00:00", time.gmtime(noon))
    assert axis_time(noon + 3600, noon) == "13:00:00"
    assert axis_time(noon + 86400, noon) == time.strftime(
        "%Y-%m-%d 12:00:00", time.gmtime(noon + 86400)
    )


def test_puf_health_history_and_sparkline(console: Any, console_as: Any) -> None:
    d = onboarded(console, new_batch(console))
    for i, margin in enumerate((31, 31, 20)):
        console.store.puf.record(
            d.device_id, 1_800_000_000.0 + i, {"margin": margin, "corrected_bits": i}
        )
    r = console_as("viewer").get(f"/console/devices/{d.device_id}")
    section = r.text.split(">PUF health</h2>")[1].split("</section>")[0]
    assert '<svg class="sparkline"' in section and "<polyline" in section
    assert section.index(">20<") < section.index(">31<")  # newest first
    assert '<td class="num">35</td>' in section  # 1 - 20/31 of the budget used


# -- actions -----------------------------------------------------------------------------------
def test_operator_actions_change_the_device(console: Any, console_as: Any) -> None:
    d = onboarded(console, new_batch(console))
    c = console_as("operator")
    page = c.get(f"/console/devices/{d.device_id}").text
    for action in ("renew", "disable", "transfer", "reenrol", "revoke"):
        assert f'action="/console/devices/{d.device_id}/{action}"' in page
    base = f"/console/devices/{d.device_id}"

    r = c.post_form(f"{base}/disable")
    assert r.status_code == 303 and r.headers["location"] == base
    assert device(console, d.device_id).disabled is True
    assert "Device disabled." in c.get(base).text
    r = c.post_form(f"{base}/enable")
    assert r.status_code == 303
    assert device(console, d.device_id).disabled is False

    r = c.post_form(f"{base}/renew")
    assert r.status_code == 303

    r = c.post_form(f"{base}/transfer")
    assert r.status_code == 200, r.text
    code = re.search(r"data-transfer-code>([^<]+)</output>", r.text)[1]  # type: ignore[index]
    assert len(code) >= 8
    assert code not in r.headers.get("set-cookie", "")  # never in a flash
    assert code not in c.get(base).text  # shown once, on the answer alone
    assert code not in console.proc.log_path.read_text(errors="replace")

    r = c.post_form(f"{base}/reenrol")
    assert r.status_code == 303
    kinds = [cmd.kind for cmd in console.store.commands.list(d.device_id)]
    assert kinds[:2] == ["reenrol", "renew"]
    page = c.get(base).text
    commands = page.split(">Commands</h2>")[1].split("</section>")[0]
    assert "renew" in commands and "reenrol" in commands
    trail = page.split(">Audit trail</h2>")[1]
    assert f"user:{c.name}" in trail and "device.disable" in trail

    # Revoking asks "I understand" first: without it nothing changes.
    r = c.post_form(f"{base}/revoke")
    assert r.status_code == 303
    assert device(console, d.device_id).state == "onboarded"
    assert "Tick “I understand” to revoke the device; nothing changed." in c.get(base).text
    r = c.post_form(f"{base}/revoke", {"confirm": "yes"})
    assert r.status_code == 303
    assert device(console, d.device_id).state == "revoked"
    assert "Device revoked." in c.get(base).text


def test_an_action_the_application_refuses_is_the_flash_sentence(
    console: Any, console_as: Any
) -> None:
    ids = registered(console, new_batch(console), 1)  # never onboarded: no transfer code
    c = console_as("operator")
    r = c.post_form(f"/console/devices/{ids[0]}/transfer")
    assert r.status_code == 303
    page = c.get(f"/console/devices/{ids[0]}").text
    assert 'class="flash flash-error" role="alert"' in page
    assert (
        console.store.db.one(
            "SELECT COUNT(*) AS n FROM transfers WHERE device_id = :d", {"d": ids[0]}
        )["n"]
        == 0
    )


@pytest.mark.parametrize("action", ["renew", "revoke", "disable", "enable", "transfer", "reenrol"])
def test_a_viewer_is_refused_every_action(console: Any, console_as: Any, action: str) -> None:
    d = onboarded(console, new_batch(console))
    c = console_as("viewer")
    page = c.get(f"/console/devices/{d.device_id}").text
    assert f'/{action}"' not in page and "<button" not in page.split(">Identity</h2>")[1]
    before = device(console, d.device_id)
    r = c.post_form(f"/console/devices/{d.device_id}/{action}", {"confirm": "yes"})
    assert r.status_code == 403
    assert "this needs the operator role; you are viewer" in r.text
    after = device(console, d.device_id)
    assert (after.state, after.disabled) == (before.state, before.disabled)
    assert console.store.commands.list(d.device_id) == []


@pytest.mark.parametrize("csrf", [None, "0" * 64])
def test_an_action_without_its_csrf_token_changes_nothing(
    console: Any, console_as: Any, csrf: str | None
) -> None:
    d = onboarded(console, new_batch(console))
    c = console_as("operator")
    data = {"confirm": "yes"} if csrf is None else {"confirm": "yes", "csrf": csrf}
    for action in ("revoke", "disable"):
        r = c.post(f"/console/devices/{d.device_id}/{action}", data=data)
        assert r.status_code == 403
    rec = device(console, d.device_id)
    assert (rec.state, rec.disabled) == ("onboarded", False)
