"""The OTA pages (host/server/console/pages_ota.py) on the real server: releases and rollouts
for a viewer, creating a rollout and pausing, resuming and aborting it for an operator, each
refused to a viewer and without the CSRF token (nothing changed, checked in the store). The
release is built and published with the `qlink` CLI; the batch's devices are marked onboarded
with an OTA key in the store (the offers are stored as commands; no board takes them)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fleetfixtures import make_batch, onboarded_batch, publish_release

Console = Any
ConsoleAs = Any


@pytest.fixture(scope="module")
def release(console: Console, tmp_path_factory: pytest.TempPathFactory) -> str:
    return publish_release(console, tmp_path_factory.mktemp("release"), "0.9.1")


def _state(console: Console, rollout_id: int) -> str:
    row = console.store.rollouts.row(rollout_id)
    assert row is not None
    return str(row.state)


def test_ota_page_for_a_viewer(console: Console, console_as: ConsoleAs, release: str) -> None:
    r = console_as("viewer").get("/console/ota")
    assert r.status_code == 200
    assert release in r.text and "0.9.1" in r.text and "Bytes served" in r.text
    assert 'action="/console/ota/rollouts"' not in r.text


def test_create_then_pause_resume_abort(
    console: Console, console_as: ConsoleAs, release: str
) -> None:
    batch, devices = onboarded_batch(console, 3)
    op = console_as("operator")
    page = op.get("/console/ota")
    assert f'value="{release}"' in page.text and f'value="{batch}"' in page.text
    form = {"release": release, "batch": batch, "percent": "100", "max_failures": "1"}
    assert console_as("viewer").post_form("/console/ota/rollouts", form).status_code == 403
    assert op.post("/console/ota/rollouts", data=form).status_code == 403
    assert [r for r in console.store.rollouts.list("acme") if r.batch == batch] == []

    r = op.post_form("/console/ota/rollouts", form)
    assert r.status_code == 303
    found = re.fullmatch(r"/console/ota/rollouts/(\d+)", r.headers["location"])
    assert found
    rid = int(found.group(1))
    assert _state(console, rid) == "active"

    page = op.get(f"/console/ota/rollouts/{rid}")
    assert page.status_code == 200
    for d in devices:
        assert f'href="/console/devices/{d}"' in page.text
    assert 'data-count="offered">3<' in page.text
    assert f"/console/ota/rollouts/{rid}/pause" in page.text
    assert f"/console/ota/rollouts/{rid}/resume" not in page.text
    viewer_page = console_as("viewer").get(f"/console/ota/rollouts/{rid}")
    assert viewer_page.status_code == 200 and "/pause" not in viewer_page.text

    for verb, was in (("pause", "active"), ("resume", "paused"), ("abort", "active")):
        url = f"/console/ota/rollouts/{rid}/{verb}"
        assert console_as("viewer").post_form(url).status_code == 403
        assert op.post(url).status_code == 403
        assert _state(console, rid) == was
        assert op.post_form(url).status_code == 303
    assert _state(console, rid) == "aborted"
    ended = op.post_form(f"/console/ota/rollouts/{rid}/resume", follow_redirects=True)
    assert "only a rollout that is paused can be" in ended.text
    assert _state(console, rid) == "aborted"
    actions = [e.action for e in console.store.audit.list("acme", limit=50)]
    assert "ota.rollout_aborted" in actions


def test_create_refusals_are_named(console: Console, console_as: ConsoleAs, release: str) -> None:
    batch = make_batch(console)
    op = console_as("operator")
    r = op.post_form(
        "/console/ota/rollouts",
        {"release": release, "batch": batch, "percent": "101"},
        follow_redirects=True,
    )
    assert "percent must be a whole number from 1 to 100" in r.text
    r = op.post_form(
        "/console/ota/rollouts",
        {"release": "unix-9.9.9", "batch": batch},
        follow_redirects=True,
    )
    assert r.status_code == 404 or "unix-9.9.9" in r.text
    assert [x for x in console.store.rollouts.list("acme") if x.batch == batch] == []


def test_other_tenants_rollout_is_not_found(
    console: Console, console_as: ConsoleAs, release: str
) -> None:
    batch, _ = onboarded_batch(console, 1, "globex")
    mine = console_as("operator", "globex")
    r = mine.post_form("/console/ota/rollouts", {"release": release, "batch": batch})
    rid = int(r.headers["location"].rsplit("/", 1)[1])
    other = console_as("operator")
    assert other.get(f"/console/ota/rollouts/{rid}").status_code == 404
    assert other.post_form(f"/console/ota/rollouts/{rid}/abort").status_code == 404
    assert _state(console, rid) == "active"
    assert other.get("/console/ota/rollouts/abc").status_code == 404
    mine.post_form(f"/console/ota/rollouts/{rid}/abort")
    assert _state(console, rid) == "aborted"


def test_rollout_page_loads_its_script(console_as: ConsoleAs, tmp_path: Path) -> None:
    c = console_as("viewer")
    js = c.get("/console/static/rollout.js")
    assert js.status_code == 200 and "rollout=" in js.text
    assert c.get("/console/static/import.js").status_code == 200
