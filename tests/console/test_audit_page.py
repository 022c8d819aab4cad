"""The audit page (host/server/console/pages_audit.py) on the real server: the tenant's events
newest first, the action, target-prefix and actor filters, keyset pages of 50 (`?before=`),
and the store's `page` it reads."""

from __future__ import annotations

import re
from typing import Any

from fleetfixtures import TEST, make_batch, unique

from host.server.store import Actor

Console = Any
ConsoleAs = Any


def _ids(text: str) -> list[int]:
    return [int(x) for x in re.findall(r'<tr data-event="(\d+)">', text)]


def test_audit_page_for_a_viewer_newest_first(console: Console, console_as: ConsoleAs) -> None:
    name = make_batch(console)
    r = console_as("viewer").get("/console/audit")
    assert r.status_code == 200
    ids = _ids(r.text)
    assert ids == sorted(ids, reverse=True) and len(ids) <= 50
    assert "(times in UTC)" in r.text and " UTC</td>" in r.text
    assert f"batch:{name}" in r.text
    assert '<option value="batch.create"' in r.text


def test_audit_filters(console: Console, console_as: ConsoleAs) -> None:
    prefix = unique("aud")
    someone = Actor("user:auditor", "192.0.2.1")
    names = [f"{prefix}-{i}" for i in range(3)]
    for i, n in enumerate(names):
        console.store.batches.create(n, "acme", None, someone if i == 0 else TEST)
    other = make_batch(console, "globex", prefix)
    c = console_as("viewer")
    r = c.get("/console/audit", params={"target": f"batch:{prefix}"})
    assert sorted(re.findall(rf"batch:({prefix}-\d)", r.text)) == names
    assert other not in r.text  # another tenant's events are never shown
    r = c.get(
        "/console/audit",
        params={"target": f"batch:{prefix}", "actor": "user:auditor", "action": "batch.create"},
    )
    assert re.findall(rf"batch:({prefix}-\d)", r.text) == [names[0]]
    assert '<option value="batch.create" selected>' in r.text
    r = c.get("/console/audit", params={"action": "no.such", "target": f"batch:{prefix}"})
    assert _ids(r.text) == [] and "No events match these filters" in r.text
    # A prefix is plain text: % and _ match only themselves.
    r = c.get("/console/audit", params={"target": "batch:%"})
    assert _ids(r.text) == []


def test_audit_keyset_pages(console: Console, console_as: ConsoleAs) -> None:
    prefix = unique("page")
    for i in range(120):
        console.store.batches.create(f"{prefix}-{i:03d}", "acme", None, TEST)
    c = console_as("viewer")
    seen: list[int] = []
    url = f"/console/audit?target=batch:{prefix}"
    pages = 0
    while url:
        r = c.get(url)
        assert r.status_code == 200
        ids = _ids(r.text)
        assert len(ids) <= 50
        seen += ids
        pages += 1
        nxt = re.search(r'<a href="([^"]+)" rel="next">', r.text)
        url = nxt.group(1).replace("&amp;", "&") if nxt else ""
        if pages > 1:
            assert "Newest" in r.text
    assert pages == 3 and len(seen) == 120 and len(set(seen)) == 120
    assert seen == sorted(seen, reverse=True)
    assert "before=" in c.get(f"/console/audit?target=batch:{prefix}").text


def test_audit_bad_query_is_a_sentence(console_as: ConsoleAs) -> None:
    c = console_as("viewer")
    r = c.get("/console/audit", params={"before": "x1"})
    assert r.status_code == 400 and "before must be an event number" in r.text
    r = c.get("/console/audit", params={"target": "x" * 201})
    assert r.status_code == 400 and "longer than 200 characters" in r.text


def test_store_page_keeps_list_behaviour(console: Console) -> None:
    listed = console.store.audit.list("acme", limit=5)
    paged = console.store.audit.page("acme", limit=5)
    assert [e.model_dump() for e in listed] == [e.model_dump() for _, e in paged]
    first = paged[0][0]
    assert all(i < first for i, _ in console.store.audit.page("acme", before=first, limit=3))
