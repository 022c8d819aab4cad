"""The tenants and batches pages (host/server/console/pages_tenants.py, pages_batches.py) on
the real server: every page for a viewer, every action for an operator and refused to a viewer
or without the CSRF token (nothing changed, checked in the store), the import in its three
formats with its row errors and streamed progress, and tenant isolation."""

from __future__ import annotations

import json
import re
from typing import Any

from fleetfixtures import (
    TEST,
    csv_text,
    device_ids,
    identities,
    make_batch,
    unique,
)

Console = Any
ConsoleAs = Any


# -- tenants ---------------------------------------------------------------------------------
def test_tenants_page_shows_only_the_users_tenant(console_as: ConsoleAs) -> None:
    c = console_as("admin")
    r = c.get("/console/tenants")
    assert r.status_code == 200
    assert "acme" in r.text and "globex" not in r.text
    assert 'action="/console/tenants"' not in r.text  # no create form for a tenant's admin


def test_platform_admin_sees_every_tenant_and_creates_one(
    console: Console, console_as: ConsoleAs
) -> None:
    c = console_as("admin", "default")
    r = c.get("/console/tenants")
    assert "acme" in r.text and "globex" in r.text
    assert 'action="/console/tenants"' in r.text
    name = unique("t")
    r = c.post_form("/console/tenants", {"name": name})
    assert r.status_code == 303 and r.headers["location"] == "/console/tenants"
    assert name in [t.name for t in console.store.tenants.list()]
    again = c.post_form("/console/tenants", {"name": name}, follow_redirects=True)
    assert "already exists" in again.text


def test_tenant_create_refused_to_other_admins_and_without_csrf(
    console: Console, console_as: ConsoleAs
) -> None:
    before = {t.name for t in console.store.tenants.list()}
    name = unique("t")
    r = console_as("admin").post_form("/console/tenants", {"name": name})
    assert r.status_code == 403
    assert "admin of tenant default" in r.text
    platform = console_as("admin", "default")
    r = platform.post("/console/tenants", data={"name": name})
    assert r.status_code == 403
    assert {t.name for t in console.store.tenants.list()} == before


# -- batches ---------------------------------------------------------------------------------
def test_batches_pages_render_for_a_viewer(console: Console, console_as: ConsoleAs) -> None:
    name = make_batch(console)
    rows = identities(2)
    console.store.batches.import_devices(name, csv_text(rows), tenant="acme", actor=TEST)
    c = console_as("viewer")
    r = c.get("/console/batches")
    assert r.status_code == 200 and name in r.text
    assert 'action="/console/batches"' not in r.text  # a viewer has no create form
    r = c.get(f"/console/batches/{name}")
    assert r.status_code == 200
    assert f"/console/devices?batch={name}" in r.text
    assert "registered" in r.text and ">2<" in r.text
    assert "/import" not in r.text and "/revoke" not in r.text  # no actions for a viewer


def test_batch_page_counts_its_devices_by_state(console: Console, console_as: ConsoleAs) -> None:
    name = make_batch(console)
    rows = identities(4)
    console.store.batches.import_devices(name, csv_text(rows), tenant="acme", actor=TEST)
    ids = sorted(d for d, _ in rows)
    console.sql("UPDATE devices SET state = 'onboarded' WHERE device_id = :d", {"d": ids[0]})
    console.sql("UPDATE devices SET state = 'revoked' WHERE device_id = :d", {"d": ids[1]})
    other = make_batch(console)  # another batch's devices are not counted
    console.store.batches.import_devices(other, csv_text(identities(3)), tenant="acme", actor=TEST)
    page = console_as("viewer").get(f"/console/batches/{name}").text
    cards = re.findall(r'card-label">(\w+)</span><span class="card-value">(\d+)<', page)
    assert dict(cards) == {"Devices": "4", "registered": "2", "onboarded": "1", "revoked": "1"}


def test_operator_creates_a_batch_viewer_cannot(console: Console, console_as: ConsoleAs) -> None:
    name = unique("new")
    viewer = console_as("viewer")
    assert viewer.post_form("/console/batches", {"name": name}).status_code == 403
    op = console_as("operator")
    assert op.post("/console/batches", data={"name": name}).status_code == 403  # no csrf
    assert name not in [b.name for b in console.store.batches.list("acme")]
    page = op.get("/console/batches")
    assert 'name="target"' in page.text and "managed" in page.text
    r = op.post_form("/console/batches", {"name": name, "target": "managed"})
    assert r.status_code == 303 and r.headers["location"] == f"/console/batches/{name}"
    made = console.store.batches.get(name, "acme")
    assert made.target == "managed"
    bad = op.post_form("/console/batches", {"name": name}, follow_redirects=True)
    assert "already exists" in bad.text
    made_by = [e.actor for e in console.store.audit.list("acme", action="batch.create")]
    assert f"user:{op.name}" in made_by


def test_other_tenants_batch_is_not_found(console: Console, console_as: ConsoleAs) -> None:
    theirs = make_batch(console, "globex")
    op = console_as("operator")
    assert op.get(f"/console/batches/{theirs}").status_code == 404
    rows = identities(1)
    r = op.post_form(f"/console/batches/{theirs}/import", files={"file": ("d.csv", csv_text(rows))})
    assert r.status_code == 404
    assert op.post_form(f"/console/batches/{theirs}/state", {"active": "false"}).status_code == 404
    assert op.post_form(f"/console/batches/{theirs}/revoke", {"confirm": "yes"}).status_code == 404
    assert device_ids(console, theirs, "globex") == []
    assert console.store.batches.get(theirs, "globex").active


def test_activate_and_deactivate(console: Console, console_as: ConsoleAs) -> None:
    name = make_batch(console)
    assert (
        console_as("viewer")
        .post_form(f"/console/batches/{name}/state", {"active": "false"})
        .status_code
        == 403
    )
    op = console_as("operator")
    assert op.post(f"/console/batches/{name}/state", data={"active": "false"}).status_code == 403
    assert console.store.batches.get(name, "acme").active
    r = op.post_form(f"/console/batches/{name}/state", {"active": "false"})
    assert r.status_code == 303
    assert not console.store.batches.get(name, "acme").active
    page = op.get(f"/console/batches/{name}")
    assert "deactivated" in page.text and "Activate" in page.text
    op.post_form(f"/console/batches/{name}/state", {"active": "true"})
    assert console.store.batches.get(name, "acme").active
    events = console.store.audit.list("acme", target=f"batch:{name}")
    changes = [e for e in events if e.action != "batch.create"]
    assert len(changes) == 2 and all(e.actor == f"user:{op.name}" for e in changes)


def test_revoke_asks_first_then_revokes(console: Console, console_as: ConsoleAs) -> None:
    name = make_batch(console)
    rows = identities(2)
    console.store.batches.import_devices(name, csv_text(rows), tenant="acme", actor=TEST)
    viewer = console_as("viewer")
    assert (
        viewer.post_form(f"/console/batches/{name}/revoke", {"confirm": "yes"}).status_code == 403
    )
    op = console_as("operator")
    assert op.post(f"/console/batches/{name}/revoke", data={"confirm": "yes"}).status_code == 403
    ask = op.post_form(f"/console/batches/{name}/revoke")
    assert ask.status_code == 200 and 'name="confirm" value="yes"' in ask.text
    states = {d.state for d in console.store.devices.list("acme", name)}
    assert states == {"registered"}
    done = op.post_form(f"/console/batches/{name}/revoke", {"confirm": "yes"})
    assert done.status_code == 303
    assert {d.state for d in console.store.devices.list("acme", name)} == {"revoked"}


def test_move_to_the_same_target_is_named(console: Console, console_as: ConsoleAs) -> None:
    name = make_batch(console)
    assert (
        console_as("viewer")
        .post_form(f"/console/batches/{name}/move", {"to": "managed"})
        .status_code
        == 403
    )
    op = console_as("operator")
    assert op.post(f"/console/batches/{name}/move", data={"to": "managed"}).status_code == 403
    r = op.post_form(f"/console/batches/{name}/move", {"to": "managed"}, follow_redirects=True)
    assert r.status_code == 200
    assert "managed" in r.text
    r = op.post_form(f"/console/batches/{name}/move", {"to": "nowhere"}, follow_redirects=True)
    assert "nowhere" in r.text and "flash-error" in r.text
    assert console.store.batches.get(name, "acme").target == "managed"


# -- import ----------------------------------------------------------------------------------
def _import(c: Any, batch: str, filename: str, text: str, **kw: Any) -> Any:
    return c.post_form(
        f"/console/batches/{batch}/import", files={"file": (filename, text.encode())}, **kw
    )


def test_import_csv(console: Console, console_as: ConsoleAs) -> None:
    name = make_batch(console)
    rows = identities(3)
    r = _import(console_as("operator"), name, "devices.csv", csv_text(rows))
    assert r.status_code == 200
    assert "3 device(s) imported" in r.text
    assert device_ids(console, name) == sorted(d for d, _ in rows)


def test_import_json_lines(console: Console, console_as: ConsoleAs) -> None:
    name = make_batch(console)
    rows = identities(2)
    text = "".join(json.dumps({"device_id": d, "public_key": k}) + "\n" for d, k in rows)
    r = _import(console_as("operator"), name, "devices.jsonl", text)
    assert r.status_code == 200 and "2 device(s) imported" in r.text
    assert device_ids(console, name) == sorted(d for d, _ in rows)


def test_import_json_array(console: Console, console_as: ConsoleAs) -> None:
    name = make_batch(console)
    rows = identities(2)
    text = json.dumps([{"device_id": d, "public_key": k} for d, k in rows], indent=1)
    r = _import(console_as("operator"), name, "devices.json", text)
    assert r.status_code == 200 and "2 device(s) imported" in r.text
    assert len(device_ids(console, name)) == 2


def test_import_with_a_bad_row_stores_nothing_and_names_it(
    console: Console, console_as: ConsoleAs
) -> None:
    name = make_batch(console)
    rows = identities(3)
    good_id, _ = rows[1]
    lines = csv_text(rows).splitlines()
    lines[3] = f"{rows[2][0]},{'00' * 65}"  # line 4: a key that is no point
    r = _import(console_as("operator"), name, "devices.csv", "\n".join(lines) + "\n")
    assert r.status_code == 400
    assert "nothing imported" in r.text
    assert '<td class="num">4</td>' in r.text
    assert "public key must be 65 bytes starting with 04" in r.text
    assert device_ids(console, name) == []
    assert console.store.devices.get(good_id) is None


def test_import_empty_and_missing_file(console: Console, console_as: ConsoleAs) -> None:
    name = make_batch(console)
    op = console_as("operator")
    r = _import(op, name, "empty.csv", "")
    assert r.status_code == 400 and "empty.csv is empty; nothing imported" in r.text
    r = _import(op, name, "comments.csv", "# only a comment\n")
    assert r.status_code == 400 and "the file has no device rows" in r.text
    r = op.post_form(f"/console/batches/{name}/import")
    assert r.status_code == 400 and "choose a file" in r.text
    assert device_ids(console, name) == []


def test_import_refused_to_a_viewer_and_without_csrf(
    console: Console, console_as: ConsoleAs
) -> None:
    name = make_batch(console)
    text = csv_text(identities(1))
    assert _import(console_as("viewer"), name, "d.csv", text).status_code == 403
    op = console_as("operator")
    r = op.post(f"/console/batches/{name}/import", files={"file": ("d.csv", text.encode())})
    assert r.status_code == 403
    assert device_ids(console, name) == []


def test_import_streams_progress_to_the_total(console: Console, console_as: ConsoleAs) -> None:
    name = make_batch(console)
    rows = identities(2500)
    text = csv_text(rows, header=False)
    op = console_as("operator")
    with op.stream(
        "POST",
        f"/console/batches/{name}/import",
        data={"csrf": op.csrf},
        files={"file": ("big.csv", text.encode())},
        headers={"Accept": "application/x-ndjson"},
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        docs = [json.loads(line) for line in r.iter_lines() if line.strip()]
    steps = [d for d in docs if "done" in d]
    assert [d["done"] for d in steps] == [1000, 2000, 2500]
    assert steps[-1]["total"] == 2500
    assert docs[-1] == {"result": {"imported": 2500, "batch": name}}
    assert len(device_ids(console, name)) == 2500


def test_streamed_import_names_bad_rows(console: Console, console_as: ConsoleAs) -> None:
    name = make_batch(console)
    rows = identities(2)
    text = csv_text(rows) + "not-a-device,00\n"
    op = console_as("operator")
    r = op.post(
        f"/console/batches/{name}/import",
        data={"csrf": op.csrf},
        files={"file": ("d.csv", text.encode())},
        headers={"Accept": "application/x-ndjson"},
    )
    last = json.loads(r.text.strip().splitlines()[-1])
    assert last["error"] == "1 bad row(s); nothing imported"
    assert [row["line"] for row in last["rows"]] == [4]
    assert device_ids(console, name) == []


def test_import_too_large_is_refused_with_a_sentence(
    console: Console, console_as: ConsoleAs
) -> None:
    name = make_batch(console)
    op = console_as("operator")
    page = op.get(f"/console/batches/{name}")
    assert "at most 16.0 MiB" in page.text
    came_from = {"Referer": f"{console.url}/console/batches/{name}"}
    r = _import(op, name, "huge.csv", "x" * (16 * 1024 * 1024 + 1), headers=came_from)
    assert r.status_code == 413 and r.headers["content-type"].startswith("text/html")
    assert "at most 16 MiB" in r.text and "Nothing was changed" in r.text  # a page, not JSON
    assert r.headers["content-security-policy"].startswith("default-src 'self'")
    assert f'<a href="/console/batches/{name}">Back to the page you came from</a>' in r.text
    assert device_ids(console, name) == []


def test_batch_of_unknown_name_is_404(console_as: ConsoleAs) -> None:
    c = console_as("viewer")
    assert c.get("/console/batches/no-such-batch").status_code == 404
