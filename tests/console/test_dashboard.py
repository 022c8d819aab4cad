"""The dashboard (`/console/`, docs/console.md "Pages"): devices by state, online now and
disabled; onboardings per minute over the last hour as a server-drawn SVG bar chart; the four
alert lists, each with its total and links, each raised here by a real cause in the running
server's store; another tenant sees none of it; the live feed's `summary` event names exactly
the counts the page shows. Each test uses a tenant of its own, so its counts are exact."""

from __future__ import annotations

import itertools
import json
import re
import time
from typing import Any

import httpx
from consoleutil import Console, ConsoleAs
from devicefixtures import new_batch, onboarded, registered

_serial = itertools.count(1)


def fresh_tenant(console: Console) -> str:
    name = f"dash{int(time.time() * 1000) % 10**7}x{next(_serial)}"
    console.proc.ensure_tenant(name)
    return name


def counts(page: httpx.Response) -> dict[str, int]:
    """The cards' counts: data-count name → number (the chart's bars excluded)."""
    cards = page.text.split('data-live="summary"', 1)[1].split("</div>\n</section>", 1)[0]
    return {k: int(v) for k, v in re.findall(r'data-count="([a-z_]+)">(\d+)<', cards)}


def alert_totals(page: httpx.Response) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r'data-alert-total="(\w+)">(\d+)<', page.text)}


def section(page: httpx.Response, heading_id: str) -> str:
    """The page from the alert heading `heading_id` to the next heading."""
    rest = page.text.split(f'id="{heading_id}"', 1)[1]
    return re.split(r"<h[23] ", rest, maxsplit=1)[0]


def _rollout(console: Console, tenant: str, batch: str, state: str, at: float) -> int:
    """A rollout row as the OTA service leaves it (its release row too)."""
    console.sql(
        "INSERT INTO ota_releases (id, version, min_version, board, files, size,"
        " payload_size, manifest_sha256, published_at, published_by, bytes_served)"
        " VALUES ('unix-dash-1.0', '1.0', '0.1', 'unix', 1, 1, 1, :h, 0, 'test', 0)"
        " ON CONFLICT (id) DO NOTHING",
        {"h": "0" * 64},
    )
    console.sql(
        "INSERT INTO ota_rollouts (release_id, batch_id, tenant, percent, max_failures, state,"
        " detail, created_at, created_by, updated_at) SELECT 'unix-dash-1.0', id, :t, 100, 1,"
        " :s, :detail, :at, 'test', :at FROM batches WHERE name = :b AND tenant = :t",
        {"t": tenant, "b": batch, "s": state, "at": at, "detail": "1 of 1 devices failed"},
    )
    row = console.store.db.one(
        "SELECT MAX(id) AS id FROM ota_rollouts WHERE tenant = :t", {"t": tenant}
    )
    assert row is not None
    return int(row["id"])


def _rollout_device(console: Console, rid: int, device_id: str, state: str, at: float) -> None:
    console.sql(
        "INSERT INTO ota_rollout_devices (rollout_id, device_id, state, reason, updated_at)"
        " VALUES (:r, :d, :s, :why, :at)",
        {"r": rid, "d": device_id, "s": state, "why": "health check failed on trial", "at": at},
    )


def test_counts_by_state_online_and_disabled(console: Console, console_as: ConsoleAs) -> None:
    tenant = fresh_tenant(console)
    batch = new_batch(console, tenant)
    ids = registered(console, batch, 6, tenant)
    now = time.time()
    console.sql(
        "UPDATE devices SET state = 'onboarded', onboarded_at = :at WHERE device_id IN (:a, :b)",
        {"at": now - 3 * 86400, "a": ids[0], "b": ids[1]},  # onboarded days ago: no bar
    )
    console.sql("UPDATE devices SET state = 'revoked' WHERE device_id = :d", {"d": ids[2]})
    console.sql("UPDATE devices SET online = TRUE WHERE device_id = :d", {"d": ids[0]})
    console.sql("UPDATE devices SET disabled = TRUE WHERE device_id = :d", {"d": ids[3]})
    page = console_as("viewer", tenant).get("/console/")
    assert page.status_code == 200
    assert counts(page) == {
        "total": 6,
        "registered": 3,
        "onboarded": 2,
        "revoked": 1,
        "online": 1,
        "disabled": 1,
    }
    assert "0 onboardings in the last hour" in page.text
    assert "<rect" not in page.text  # an empty hour draws no bar
    assert set(alert_totals(page).values()) == {0}
    assert page.text.count('<p class="muted">None.</p>') == 4
    assert ' style="' not in page.text and "<style" not in page.text  # the CSP forbids it
    assert '<script src="/console/static/dashboard.js" defer></script>' in page.text


def test_onboardings_per_minute_are_bars_with_a_total(
    console: Console, console_as: ConsoleAs
) -> None:
    tenant = fresh_tenant(console)
    batch = new_batch(console, tenant)
    ids = registered(console, batch, 7, tenant)
    now = time.time()
    # 3 devices 5 minutes ago, 1 device 30 minutes ago, 2 right now, 1 two hours ago (outside).
    ages = [300, 300, 300, 1800, 10, 10, 7200]
    for device_id, age in zip(ids, ages, strict=True):
        console.sql(
            "UPDATE devices SET state = 'onboarded', onboarded_at = :at WHERE device_id = :d",
            {"at": now - age, "d": device_id},
        )
    page = console_as("viewer", tenant).get("/console/")
    assert page.status_code == 200
    assert "6 onboardings in the last hour" in page.text and "at most 3 in one minute" in page.text
    svg = page.text.split('data-chart="onboardings"', 1)[1].split("</svg>", 1)[0]
    assert 'role="img"' in page.text and 'aria-labelledby="onb-title onb-desc"' in page.text
    assert '<title id="onb-title">Onboardings per minute over the last hour</title>' in svg
    desc = re.search(r'<desc id="onb-desc">([^<]*)</desc>', svg)
    assert desc and desc.group(1).startswith("6 devices onboarded from ")
    assert "in 3 of the 60 minutes; at most 3 in one minute." in desc.group(1)
    bars = re.findall(
        r'<rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)" data-count="(\d+)">'
        r"<title>(\d\d:\d\d) UTC: (\d+) onboardings?</title>",
        svg,
    )
    assert [int(b[4]) for b in bars] == [1, 3, 2]  # oldest minute first
    assert [int(b[6]) for b in bars] == [1, 3, 2]
    xs = [float(b[0]) for b in bars]
    assert xs == sorted(xs)
    heights = {int(b[4]): float(b[3]) for b in bars}
    assert heights[3] > heights[2] > heights[1] > 0  # the busiest minute is the tallest
    tops = {int(b[4]): float(b[1]) + float(b[3]) for b in bars}
    assert len(set(tops.values())) == 1  # every bar stands on the axis
    assert ' style="' not in svg


def test_each_alert_list_shows_its_cause_total_and_links(
    console: Console, console_as: ConsoleAs
) -> None:
    tenant = fresh_tenant(console)
    batch = new_batch(console, tenant)
    now = time.time()
    # A certificate that ends in two days: a device onboarded through the server, whose
    # certificate's end the store says is near (as it is for a certificate issued long ago).
    expiring = onboarded(console, batch, tenant).device_id
    later = onboarded(console, batch, tenant).device_id
    console.sql(
        "UPDATE devices SET not_after = :na WHERE device_id = :d",
        {"na": now + 2 * 86400, "d": expiring},
    )
    # A drifting PUF: its decoder margin fell from 31 to 9 (71 % of the budget used).
    drifting = registered(console, batch, 1, tenant)[0]
    console.store.puf.record(drifting, now - 60, {"margin": 31, "corrected_bits": 2})
    console.store.puf.record(drifting, now, {"margin": 9, "corrected_bits": 5})
    # A rollout that halted after a device rolled its update back, another device refused it.
    rid = _rollout(console, tenant, batch, "halted", now - 30)
    _rollout_device(console, rid, later, "rolled_back", now - 40)
    _rollout_device(console, rid, drifting, "refused", now - 35)
    _rollout_device(console, rid, expiring, "committed", now - 50)

    page = console_as("viewer", tenant).get("/console/")
    assert page.status_code == 200
    assert alert_totals(page) == {"expiring": 1, "failed_updates": 2, "puf": 1, "halted": 1}

    certs = section(page, "h-expiring")
    assert f'<a href="/console/devices/{expiring}" title="{expiring}">{expiring[:12]}…</a>' in certs
    assert later not in certs
    assert time.strftime("%Y-%m-%d %H:%M", time.gmtime(now + 2 * 86400)) in certs

    failed = section(page, "h-failed")
    rows = re.findall(r"<tr><td class=\"mono\"><a href=\"/console/devices/(\w+)\" title", failed)
    assert rows == [drifting, later]  # newest first
    assert failed.count(f'<a href="/console/ota/rollouts/{rid}">rollout {rid}</a>') == 2
    assert "rolled_back" in failed and "refused" in failed
    assert "health check failed on trial" in failed and expiring not in failed

    puf = section(page, "h-puf")
    assert f'<a href="/console/devices/{drifting}" title="{drifting}">{drifting[:12]}…</a>' in puf
    assert "71 %" in puf

    halted = section(page, "h-halted")
    assert f'<a href="/console/ota/rollouts/{rid}">rollout {rid}</a>' in halted
    assert "unix-dash-1.0" in halted and "1 of 1 devices failed" in halted

    # Every link leads to a page of this tenant.
    viewer = console_as("viewer", tenant)
    for path in (f"/console/devices/{expiring}", f"/console/ota/rollouts/{rid}"):
        assert viewer.get(path).status_code == 200, path

    # Another tenant sees none of it.
    other = console_as("viewer", fresh_tenant(console)).get("/console/")
    assert other.status_code == 200
    assert counts(other)["total"] == 0 and set(alert_totals(other).values()) == {0}
    for secret in (expiring, later, drifting, f"/console/ota/rollouts/{rid}", batch):
        assert secret not in other.text


def test_an_alert_list_says_how_many_it_leaves_out(console: Console, console_as: ConsoleAs) -> None:
    tenant = fresh_tenant(console)
    batch = new_batch(console, tenant)
    ids = registered(console, batch, 12, tenant)
    now = time.time()
    for n, device_id in enumerate(ids):
        console.sql(
            "UPDATE devices SET state = 'onboarded', onboarded_at = :on, not_after = :na"
            " WHERE device_id = :d",
            {"on": now - 86400, "na": now + 3600 + n, "d": device_id},
        )
    page = console_as("viewer", tenant).get("/console/")
    certs = section(page, "h-expiring")
    assert alert_totals(page)["expiring"] == 12
    assert len(re.findall(r'<a href="/console/devices/', certs)) == 10
    assert "The first 10 of 12." in certs


def test_the_live_summary_names_the_counts_the_page_shows(
    console: Console, console_as: ConsoleAs
) -> None:
    tenant = fresh_tenant(console)
    batch = new_batch(console, tenant)
    registered(console, batch, 2, tenant)
    viewer = console_as("viewer", tenant)
    shown = counts(viewer.get("/console/"))
    event: dict[str, Any] | None = None
    # The feed ends a stream when more changes share one instant than a read holds (another
    # test's bulk import on this server), until that instant leaves its overlap window; the
    # browser's EventSource then reconnects, as here.
    deadline = time.monotonic() + 8
    while event is None and time.monotonic() < deadline:
        with viewer.stream("GET", "/console/live", timeout=10) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            name = None
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: ") and name == "summary":
                    event = json.loads(line[6:])
                    break
    assert event is not None
    flat = {"total": event["total"], "online": event["online"], "disabled": event["disabled"]}
    flat.update(event["by_state"])
    assert flat == shown  # dashboard.js writes each into the card of the same name
    assert shown["total"] == 2 and shown["registered"] == 2


def test_dashboard_script_is_served_and_follows_summary_events(console: Console) -> None:
    with console.client() as c:
        r = c.get("/console/static/dashboard.js")
    assert r.status_code == 200 and "javascript" in r.headers["content-type"]
    assert 'qlink.live("", {' in r.text and "summary:" in r.text
    for name in ("total", "online", "disabled", "by_state"):
        assert name in r.text
