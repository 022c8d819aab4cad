"""What the web console reads (host/server/store/views.py) and the device facts it shows that the
store keeps true: firmware version, telemetry history (64 slots), presence (its `online` event,
the broker plugin's report of a closed connection, revocation and disabling) and `changed_at`,
the live feed's cursor, moving on every change."""

from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from brokerutil import Device
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from host.server.broker import ManagedBroker
from host.server.ca import CertificateAuthority
from host.server.events import EventIntake
from host.server.policy.mosquitto import MosquittoDynsec
from host.server.schemas import STATE_ONBOARDED, STATE_REVOKED
from host.server.store import LOCAL, Invalid, NotFound, Store
from host.server.store.devices import TELEMETRY_SLOTS


@functools.cache
def _id(n: int) -> tuple[str, str]:
    """Device `n`'s ID and public key (hex): a real P-256 key, as an import requires."""
    pub = (
        ec.derive_private_key(n, ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    return hashlib.sha256(pub).hexdigest(), pub.hex()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "v.sqlite")
    s.tenants.create("acme")
    s.tenants.create("globex")
    s.batches.create("b1", "acme")
    s.batches.create("b2", "acme")
    s.batches.create("g1", "globex")
    yield s
    s.close()


def _import(store: Store, batch: str, tenant: str, numbers: range) -> list[str]:
    ids = [_id(n) for n in numbers]
    store.batches.import_devices(batch, [f"{d},{p}" for d, p in ids], tenant=tenant)
    return sorted(d for d, _ in ids)


def _onboard(store: Store, device_id: str, at: float, not_after: float) -> None:
    with store.db.transaction() as tx:
        tx.execute(
            "UPDATE devices SET state = :s, onboarded_at = :at, not_after = :na, serial = :serial"
            " WHERE device_id = :d",
            {"s": STATE_ONBOARDED, "at": at, "na": not_after, "d": device_id, "serial": "01"},
        )


def _telemetry(seq: int, fw: str = "1.2.0") -> dict[str, object]:
    return {"seq": seq, "uptime_ms": seq * 1000, "mem_free": 5000, "fw": fw}


# -- the device list ----------------------------------------------------------------------------


def test_device_pages_follow_each_other_by_id_and_see_only_the_tenant(store: Store) -> None:
    acme = _import(store, "b1", "acme", range(1, 8)) + _import(store, "b2", "acme", range(8, 11))
    globex = _import(store, "g1", "globex", range(20, 25))
    acme.sort()
    views = store.views
    seen: list[str] = []
    after = None
    while True:
        page = views.device_page("acme", after=after, limit=3)
        if not page:
            break
        assert len(page) <= 3
        seen += [r.id for r in page]
        after = page[-1].id
    assert seen == acme
    assert all(r.tenant == "acme" for r in views.device_page("acme", limit=50))
    assert [r.id for r in views.device_page("globex")] == globex
    assert [r.id for r in views.device_page(None, limit=500)] == sorted(acme + globex)
    assert views.device_page("nobody") == []


def test_device_page_filters(store: Store) -> None:
    b1 = _import(store, "b1", "acme", range(1, 6))
    b2 = _import(store, "b2", "acme", range(6, 9))
    _import(store, "g1", "globex", range(20, 23))
    views = store.views
    assert [r.id for r in views.device_page("acme", batch="b2")] == b2
    assert views.device_page("acme", batch="g1") == []  # another tenant's batch: nothing
    assert views.device_page("acme", batch="nope") == []
    _onboard(store, b1[0], 100.0, 200.0)
    row = views.device_page("acme", state=STATE_ONBOARDED)
    assert [r.id for r in row] == [b1[0]] and row[0].onboarded_at == 100.0
    assert row[0].not_after == 200.0 and row[0].batch == "b1" and not row[0].online
    store.devices.record_telemetry(b1[1], _telemetry(1, "2.0.0"), 50.0, "acme")
    fw = views.device_page("acme", fw="2.0.0")
    assert [r.id for r in fw] == [b1[1]] and fw[0].fw == "2.0.0" and fw[0].last_seen == 50.0
    assert views.device_page("globex", fw="2.0.0") == []
    dev = store.devices.get(b1[2])
    assert dev is not None
    store.devices.set_disabled(dev, True, LOCAL)
    assert [r.id for r in views.device_page("acme", state="disabled")] == [b1[2]]
    target = b2[1]
    for prefix in (target[:1], target[:6], target[:6].upper(), target):
        found = [r.id for r in views.device_page(None, prefix=prefix)]
        assert target in found and all(i.startswith(prefix.lower()) for i in found)
    both = views.device_page("acme", batch="b2", prefix=target[:10])
    assert [r.id for r in both] == [target]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"state": "lost"}, "state must be one of registered, onboarded, revoked, disabled"),
        ({"prefix": "xyz"}, "1 to 64 hexadecimal characters"),
        ({"prefix": "a" * 65}, "1 to 64 hexadecimal characters"),
        ({"limit": 0}, "a page holds 1 to 500 devices"),
        ({"limit": 501}, "a page holds 1 to 500 devices"),
    ],
)
def test_a_bad_filter_is_refused_with_what_is_allowed(
    store: Store, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(Invalid, match=message):
        store.views.device_page("acme", **kwargs)  # type: ignore[arg-type]


def test_fw_versions_are_the_tenants_own(store: Store) -> None:
    a = _import(store, "b1", "acme", range(1, 4))
    g = _import(store, "g1", "globex", range(20, 22))
    store.devices.record_telemetry(a[0], _telemetry(1, "1.0"), 1.0, "acme")
    store.devices.record_telemetry(a[1], _telemetry(1, "1.1"), 1.0, "acme")
    store.devices.record_telemetry(a[2], _telemetry(1, "1.0"), 1.0, "acme")
    store.devices.record_telemetry(g[0], _telemetry(1, "9.9"), 1.0, "globex")
    assert store.views.fw_versions("acme") == ["1.0", "1.1"]
    assert store.views.fw_versions("globex") == ["9.9"]
    assert store.views.fw_versions(None) == ["1.0", "1.1", "9.9"]


def test_batch_counts_count_each_state_of_the_tenants_batch_only(store: Store) -> None:
    a = _import(store, "b1", "acme", range(1, 6))
    _import(store, "b2", "acme", range(6, 8))
    _import(store, "g1", "globex", range(20, 23))
    _onboard(store, a[0], 1.0, 2.0)
    _onboard(store, a[1], 1.0, 2.0)
    with store.db.transaction() as tx:
        tx.execute(
            "UPDATE devices SET state = :r WHERE device_id = :d", {"r": STATE_REVOKED, "d": a[2]}
        )
    assert store.views.batch_counts("acme", "b1") == {"registered": 2, "onboarded": 2, "revoked": 1}
    assert store.views.batch_counts("acme", "b2") == {"registered": 2, "onboarded": 0, "revoked": 0}
    assert store.views.batch_counts(None, "g1") == {"registered": 3, "onboarded": 0, "revoked": 0}
    store.batches.create("empty", "acme")
    assert set(store.views.batch_counts("acme", "empty").values()) == {0}
    for tenant, batch in (("acme", "g1"), ("globex", "b1"), ("acme", "nope")):
        with pytest.raises(NotFound, match=f"batch '{batch}' does not exist"):
            store.views.batch_counts(tenant, batch)


def test_batch_names_are_the_tenants_own_in_order(store: Store) -> None:
    store.batches.create("a0", "acme")
    assert store.views.batch_names("acme") == ["a0", "b1", "b2"]
    assert store.views.batch_names("globex") == ["g1"]
    assert store.views.batch_names(None) == ["a0", "b1", "b2", "g1"]
    assert store.views.batch_names("nobody") == []


# -- the dashboard ------------------------------------------------------------------------------


def test_summary_counts_states_presence_and_disabled(store: Store) -> None:
    a = _import(store, "b1", "acme", range(1, 6))
    _import(store, "g1", "globex", range(20, 23))
    _onboard(store, a[0], 1.0, 2.0)
    _onboard(store, a[1], 1.0, 2.0)
    store.devices.set_online(a[0], True)
    dev = store.devices.get(a[2])
    assert dev is not None
    store.devices.set_disabled(dev, True, LOCAL)
    s = store.views.summary("acme")
    assert s.total == 5 and s.online == 1 and s.disabled == 1
    assert s.by_state == {"registered": 3, "onboarded": 2, "revoked": 0}
    assert store.views.summary("globex").by_state == {"registered": 3, "onboarded": 0, "revoked": 0}
    assert store.views.summary(None).total == 8
    empty = store.views.summary("nobody")
    assert empty.total == 0 and empty.by_state == {"registered": 0, "onboarded": 0, "revoked": 0}


def test_summaries_are_every_tenants_summary_in_one_read(store: Store) -> None:
    a = _import(store, "b1", "acme", range(1, 6))
    _import(store, "b2", "acme", range(6, 8))
    g = _import(store, "g1", "globex", range(20, 23))
    store.tenants.create("initech")
    store.batches.create("empty", "initech")  # a tenant with a batch and no devices
    _onboard(store, a[0], 1.0, 2.0)
    _onboard(store, g[0], 1.0, 2.0)
    store.devices.set_online(a[0], True)
    store.devices.set_online(g[0], True)
    for device_id in (a[3], g[1]):
        dev = store.devices.get(device_id)
        assert dev is not None
        store.devices.set_disabled(dev, True, LOCAL)
    with store.db.transaction() as tx:
        tx.execute(
            "UPDATE devices SET state = :r WHERE device_id = :d", {"r": STATE_REVOKED, "d": a[4]}
        )
    reads: list[str] = []
    real_all = store.db.all

    def counted(sql: str, params: dict[str, object] | None = None) -> list[dict[str, object]]:
        reads.append(sql)
        return real_all(sql, params)

    store.db.all = counted  # type: ignore[method-assign]
    try:
        every = store.views.summaries()
    finally:
        del store.db.all
    assert len(reads) == 2  # the batches' tenants, and one grouped count
    assert set(every) == {None, "acme", "globex", "initech"}
    for tenant in (None, "acme", "globex", "initech"):
        assert every[tenant] == store.views.summary(tenant), tenant
    assert every["acme"].by_state == {"registered": 5, "onboarded": 1, "revoked": 1}
    assert (every["acme"].online, every["acme"].disabled) == (1, 1)
    assert every[None].total == 10 and every[None].online == 2 and every[None].disabled == 2
    assert every["initech"] == store.views.summary("nobody")  # zeros, every state listed


def test_onboardings_per_minute_oldest_first(store: Store) -> None:
    a = _import(store, "b1", "acme", range(1, 7))
    g = _import(store, "g1", "globex", range(20, 22))
    now = 10_000.0
    for device_id, ago in zip(a, [1, 2, 59, 61, 3599, 3601], strict=True):
        _onboard(store, device_id, now - ago, now + 1e6)
    _onboard(store, g[0], now - 5, now + 1e6)
    counts = store.views.onboardings_per_minute("acme", now)
    assert len(counts) == 60
    assert counts[-1] == 3 and counts[-2] == 1 and counts[0] == 1 and sum(counts) == 5
    assert store.views.onboardings_per_minute(None, now)[-1] == 4
    assert store.views.onboardings_per_minute("acme", now, minutes=1) == [3]
    with pytest.raises(Invalid, match="1 to 1440 minutes"):
        store.views.onboardings_per_minute("acme", now, minutes=0)


def _rollout(store: Store, tenant: str, batch_id: int, state: str, at: float) -> int:
    with store.db.transaction() as tx:
        tx.execute(
            "INSERT INTO ota_releases (id, version, min_version, board, files, size,"
            " payload_size, manifest_sha256, published_at, published_by, bytes_served)"
            " VALUES ('unix-1.0', '1.0', '0.1', 'unix', 1, 1, 1, :h, 0, 'x', 0)"
            " ON CONFLICT (id) DO NOTHING",
            {"h": "0" * 64},
        )
        row = tx.one(
            "INSERT INTO ota_rollouts (release_id, batch_id, tenant, percent, max_failures,"
            " state, detail, created_at, created_by, updated_at) VALUES ('unix-1.0', :b, :t,"
            " 100, 1, :s, :detail, :at, 'x', :at) RETURNING id",
            {"b": batch_id, "t": tenant, "s": state, "at": at, "detail": "too many failures"},
        )
    assert row is not None
    return int(row["id"])


def _rollout_device(store: Store, rid: int, device_id: str, state: str, at: float) -> None:
    with store.db.transaction() as tx:
        tx.execute(
            "INSERT INTO ota_rollout_devices (rollout_id, device_id, state, reason, updated_at)"
            " VALUES (:r, :d, :s, :why, :at) ON CONFLICT (rollout_id, device_id) DO UPDATE SET"
            " state = excluded.state, reason = excluded.reason, updated_at = excluded.updated_at",
            {"r": rid, "d": device_id, "s": state, "why": "health", "at": at},
        )


def _batch_id(store: Store, name: str) -> int:
    row = store.db.one("SELECT id FROM batches WHERE name = :n", {"n": name})
    assert row is not None
    return int(row["id"])


def test_alerts_list_each_kind_newest_or_soonest_first_with_totals(store: Store) -> None:
    a = _import(store, "b1", "acme", range(1, 8))
    g = _import(store, "g1", "globex", range(20, 23))
    now = 1_000_000.0
    week = 7 * 86400
    _onboard(store, a[0], 1.0, now + 3600)  # expiring
    _onboard(store, a[1], 1.0, now - 10)  # expired
    _onboard(store, a[2], 1.0, now + week + 10)  # later
    _onboard(store, g[0], 1.0, now + 60)
    with store.db.transaction() as tx:  # a revoked one's certificate is no alert
        tx.execute(
            "UPDATE devices SET state = :r, not_after = :na WHERE device_id = :d",
            {"r": STATE_REVOKED, "na": now + 5, "d": a[3]},
        )
        tx.execute("UPDATE devices SET puf_used_pct = 80 WHERE device_id = :d", {"d": a[4]})
        tx.execute("UPDATE devices SET puf_used_pct = 49 WHERE device_id = :d", {"d": a[5]})
        tx.execute("UPDATE devices SET puf_used_pct = 95 WHERE device_id = :d", {"d": g[1]})
    rid = _rollout(store, "acme", _batch_id(store, "b1"), "halted", 50.0)
    _rollout_device(store, rid, a[0], "rolled_back", 10.0)
    _rollout_device(store, rid, a[1], "refused", 20.0)
    _rollout_device(store, rid, a[2], "committed", 30.0)
    grid = _rollout(store, "globex", _batch_id(store, "g1"), "active", 40.0)
    _rollout_device(store, grid, g[0], "rolled_back", 40.0)

    alerts = store.views.alerts("acme", now)
    assert [c.device_id for c in alerts.expiring.items] == [a[1], a[0]]
    assert alerts.expiring.total == 2
    assert [(f.device_id, f.state, f.rollout_id) for f in alerts.failed_updates.items] == [
        (a[1], "refused", rid),
        (a[0], "rolled_back", rid),
    ]
    assert alerts.failed_updates.items[0].reason == "health"
    assert [(p.device_id, p.used_pct) for p in alerts.puf.items] == [(a[4], 80)]
    assert [(h.id, h.release, h.detail) for h in alerts.halted.items] == [
        (rid, "unix-1.0", "too many failures")
    ]
    limited = store.views.alerts("acme", now, limit=1, puf_drift_pct=40)
    assert len(limited.expiring.items) == 1 and limited.expiring.total == 2
    assert limited.failed_updates.total == 2 and limited.puf.total == 2
    every = store.views.alerts(None, now)
    assert every.expiring.total == 3 and every.failed_updates.total == 3 and every.puf.total == 2
    globex = store.views.alerts("globex", now)
    assert [c.device_id for c in globex.expiring.items] == [g[0]]
    assert globex.halted.total == 0 and globex.failed_updates.items[0].tenant == "globex"


# -- the live feed's cursor and the facts behind it --------------------------------------------


def _changed_at(store: Store, device_id: str) -> float:
    row = store.db.one("SELECT changed_at FROM devices WHERE device_id = :d", {"d": device_id})
    assert row is not None and row["changed_at"] is not None
    return float(row["changed_at"])


def test_changed_at_moves_on_every_change_and_the_feed_sees_each(store: Store) -> None:
    a = _import(store, "b1", "acme", range(1, 3))
    g = _import(store, "g1", "globex", range(20, 21))
    cursor = max(_changed_at(store, d) for d in a + g)  # an import is a change too
    views = store.views
    assert views.changes_since(cursor) == []

    def changed(action: object, device_id: str) -> None:
        nonlocal cursor
        changes = views.changes_since(cursor)
        assert [c.id for c in changes] == [device_id], action
        cursor = changes[-1].changed_at

    time.sleep(0.01)  # each change is timestamped by the clock
    store.devices.record_telemetry(a[0], _telemetry(1), time.time(), "acme")
    changed("telemetry", a[0])
    c = views.changes_since(0)
    first = next(x for x in c if x.id == a[0])
    assert first.fw == "1.2.0" and first.telemetry == _telemetry(1) and first.tenant == "acme"
    time.sleep(0.01)
    assert store.devices.set_online(a[1], True)
    changed("online", a[1])
    assert not store.devices.set_online(a[1], True)  # no change: no event
    assert views.changes_since(cursor) == []
    dev = store.devices.get(a[1])
    assert dev is not None
    time.sleep(0.01)
    store.devices.set_disabled(dev, True, LOCAL)
    changed("disable", a[1])
    after = store.devices.get(a[1])
    assert after is not None
    assert after.disabled and not store.views.device_page("acme", state="disabled")[0].online
    assert store.devices.set_online(g[0], True)
    time.sleep(0.01)
    gdev = store.devices.get(g[0])
    assert gdev is not None
    assert store.devices.revoke(gdev, LOCAL)
    changes = views.changes_since(cursor)
    assert [x.id for x in changes] == [g[0]]
    assert changes[0].state == STATE_REVOKED and not changes[0].online
    assert changes[0].tenant == "globex"


def test_a_full_answer_never_splits_one_instant(store: Store) -> None:
    ids = _import(store, "b1", "acme", range(1, 6))
    with store.db.transaction() as tx:
        for n, d in enumerate(ids):
            tx.execute(
                "UPDATE devices SET changed_at = :at WHERE device_id = :d",
                {"at": 10.0 if n < 2 else 20.0, "d": d},
            )
    first = store.views.changes_since(0, limit=3)
    assert [c.changed_at for c in first] == [10.0, 10.0]  # the third (20.0) waits
    rest = store.views.changes_since(first[-1].changed_at, limit=3)
    assert [c.id for c in rest] == ids[2:]


def test_rollout_changes_name_each_rollout_once_at_its_latest_change(store: Store) -> None:
    a = _import(store, "b1", "acme", range(1, 3))
    g = _import(store, "g1", "globex", range(20, 21))
    r1 = _rollout(store, "acme", _batch_id(store, "b1"), "active", 10.0)
    r2 = _rollout(store, "globex", _batch_id(store, "g1"), "active", 12.0)
    _rollout_device(store, r1, a[0], "offered", 15.0)
    _rollout_device(store, r1, a[1], "offered", 11.0)
    _rollout_device(store, r2, g[0], "offered", 13.0)
    assert [(c.id, c.tenant, c.updated_at) for c in store.views.rollout_changes_since(0)] == [
        (r2, "globex", 13.0),
        (r1, "acme", 15.0),
    ]
    assert [c.id for c in store.views.rollout_changes_since(13.0)] == [r1]
    assert store.views.rollout_changes_since(15.0) == []


def test_telemetry_history_keeps_the_last_64_messages_oldest_first(store: Store) -> None:
    a = _import(store, "b1", "acme", range(1, 3))
    for seq in range(1, 101):
        assert store.devices.record_telemetry(a[0], _telemetry(seq), 1000.0 + seq, "acme")
    history = store.views.telemetry_history(a[0])
    assert len(history) == TELEMETRY_SLOTS
    assert [doc["seq"] for _, doc in history] == list(range(37, 101))
    assert [at for at, _ in history] == [1000.0 + s for s in range(37, 101)]
    assert store.views.telemetry_history(a[1]) == []
    rows = store.db.one("SELECT COUNT(*) AS n FROM telemetry_samples", {})
    assert rows is not None and rows["n"] == TELEMETRY_SLOTS


def test_telemetry_of_another_tenant_or_unknown_device_writes_nothing(store: Store) -> None:
    a = _import(store, "b1", "acme", range(1, 2))
    before = _changed_at(store, a[0])
    assert not store.devices.record_telemetry(a[0], _telemetry(1), before + 10, "globex")
    assert not store.devices.record_telemetry(_id(99)[0], _telemetry(1), before + 10, "acme")
    assert store.views.telemetry_history(a[0]) == []
    assert _changed_at(store, a[0]) == before
    dev = store.devices.get(a[0])
    assert dev is not None and dev.last_seen is None


def test_a_long_firmware_version_is_cut_to_20_characters(store: Store) -> None:
    a = _import(store, "b1", "acme", range(1, 2))
    store.devices.record_telemetry(a[0], _telemetry(1, "v" * 40), 1.0, "acme")
    assert store.views.device_page("acme")[0].fw == "v" * 20


# -- the application's typed reads --------------------------------------------------------------


def test_application_telemetry_history_answers_not_found_outside_the_tenant(
    store: Store, tmp_path: Path
) -> None:
    from host.server.application import Application
    from host.server.settings import Settings
    from host.server.store import NotFound

    a = _import(store, "b1", "acme", range(1, 2))
    store.devices.record_telemetry(a[0], _telemetry(3), 5.0, "acme")
    app = Application.__new__(Application)  # the reads need the store alone
    app.store = store
    app.settings = Settings(data_dir=tmp_path)
    assert app.telemetry_history(a[0], "acme") == [(5.0, _telemetry(3))]
    assert app.telemetry_history(a[0].upper(), None) == [(5.0, _telemetry(3))]
    for device_id, tenant in ((a[0], "globex"), ("zz", "acme"), (_id(99)[0], None)):
        with pytest.raises(NotFound, match="does not exist"):
            app.telemetry_history(device_id, tenant)
    board = app.dashboard("acme", 100.0)
    assert board.summary.total == 1 and len(board.onboardings_per_minute) == 60
    assert [r.id for r in app.device_page("acme", fw="1.2.0")] == a
    assert app.fw_versions("globex") == []
    assert [c.id for c in app.changes_since(0)] == a
    assert app.rollout_changes_since(0) == []


# -- the plans at 100,000 devices -------------------------------------------------------------


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    s = Store(tmp_path_factory.mktemp("big") / "big.sqlite")
    s.tenants.create("acme")
    s.tenants.create("globex")
    s.batches.create("b1", "acme")
    s.batches.create("b2", "acme")
    s.batches.create("g1", "globex")
    ids = {name: _batch_id(s, name) for name in ("b1", "b2", "g1")}
    batches = [ids["b1"], ids["b2"], ids["g1"]]
    states = ["registered", "onboarded", "onboarded", "revoked"]
    rows = []
    for n in range(100_000):
        d = hashlib.sha256(n.to_bytes(4, "big")).hexdigest()
        rows.append(
            (
                d,
                b"\x04" + bytes(64),
                batches[n % 3],
                states[n % 4],
                n % 7 == 0,
                f"1.{n % 5}.0",
                n * 0.5,
                1e9 + n,
                1e9 - n,
                n % 11 == 0,
            )
        )
    with sqlite3.connect(s.path) as db:  # type: ignore[arg-type]
        db.executemany(
            "INSERT INTO devices (device_id, public_key, batch_id, state, disabled,"
            " policy_exception, epoch, fw, changed_at, not_after, onboarded_at, online)"
            " VALUES (?, ?, ?, ?, ?, 0, 0, ?, ?, ?, ?, ?)",
            rows,
        )
        db.execute("ANALYZE")
    yield s
    s.close()


_VARIANTS = [
    {},
    {"after": "8" + "0" * 63},
    {"state": "onboarded"},
    {"state": "onboarded", "after": "8" + "0" * 63},
    {"batch": "b2"},
    {"batch": "b2", "after": "8" + "0" * 63},
    {"fw": "1.3.0"},
    {"fw": "1.3.0", "after": "8" + "0" * 63},
    {"prefix": "ab"},
    {"prefix": "ab", "after": "ab8"},
    {"state": "disabled"},
]


@pytest.mark.parametrize("tenant", [None, "acme"])
@pytest.mark.parametrize("kwargs", _VARIANTS, ids=lambda k: "-".join(k) or "all")
def test_device_page_reads_an_index_and_sorts_nothing_at_100k(
    big: Store, tenant: str | None, kwargs: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    plans: list[str] = []
    views = big.views
    db = views._db
    real_all = db.all

    def explained(sql: str, params: dict[str, object] | None = None) -> list[dict[str, object]]:
        if sql.startswith("SELECT d.device_id"):
            rows = real_all("EXPLAIN QUERY PLAN " + sql, params)
            plans.append(" | ".join(str(r["detail"]) for r in rows))
        return real_all(sql, params)

    monkeypatch.setattr(db, "all", explained)
    started = time.perf_counter()
    page = views.device_page(tenant, **kwargs)  # type: ignore[arg-type]
    took = time.perf_counter() - started
    monkeypatch.undo()
    assert len(page) == 50
    assert [r.id for r in page] == sorted(r.id for r in page)
    (plan,) = plans
    first = plan.split(" | ")[0]
    assert "USING" in first and "INDEX" in first, plan  # devices come through an index ...
    assert "TEMP B-TREE" not in plan, plan  # ... in device-ID order: nothing sorted
    assert took < 0.25, f"{took * 1000:.0f} ms for {kwargs}"  # the page's query alone


def test_dashboard_and_feed_queries_at_100k(big: Store) -> None:
    views = big.views
    started = time.perf_counter()
    summary = views.summary("acme")
    views.onboardings_per_minute("acme", 1e9)
    views.alerts("acme", 1e9)
    views.fw_versions("acme")
    views.batch_names("acme")
    counts = views.batch_counts("acme", "b2")
    took = time.perf_counter() - started
    assert summary.total == 66_667 and sum(counts.values()) == 33_333
    assert took < 2.0, f"{took * 1000:.0f} ms"
    # The live feed's counts of every tenant: the covering index alone, nothing sorted.
    started = time.perf_counter()
    every = views.summaries()
    took = time.perf_counter() - started
    assert every["acme"] == summary and every["globex"] == views.summary("globex")
    assert every[None].total == 100_000
    plan = " | ".join(
        str(r["detail"])
        for r in big.db.all(
            "EXPLAIN QUERY PLAN SELECT batch_id, state, online, disabled, COUNT(*) AS n"
            " FROM devices GROUP BY batch_id, state, online, disabled",
            {},
        )
    )
    assert "COVERING INDEX ix_devices_summary" in plan and "TEMP B-TREE" not in plan, plan
    assert took < 0.25, f"{took * 1000:.0f} ms"
    plan = big.db.all(
        "EXPLAIN QUERY PLAN SELECT d.device_id FROM devices d WHERE d.changed_at > 1"
        " ORDER BY d.changed_at LIMIT 500",
        {},
    )
    assert "ix_devices_changed_at" in str(plan[0]["detail"])
    started = time.perf_counter()
    # A full answer leaves its last instant to the next call (another row may share it).
    assert len(views.changes_since(49_000.0)) == 499
    assert time.perf_counter() - started < 0.25


def test_the_dashboard_reads_onboarding_times_and_expiries_from_their_indexes(
    big: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The indexes of `onboarded_at` and `not_after` hold only the devices that have them
    (a first onboarding writes one entry of each): every query on them bounds the column, so
    the planner still takes them."""
    plans: list[str] = []
    real_all = big.db.all

    def explained(sql: str, params: dict[str, object] | None = None) -> list[dict[str, object]]:
        if "d.onboarded_at >=" in sql or "d.not_after <" in sql:
            rows = real_all("EXPLAIN QUERY PLAN " + sql, params)
            plans.append(" | ".join(str(r["detail"]) for r in rows))
        return real_all(sql, params)

    monkeypatch.setattr(big.db, "all", explained)
    for tenant in ("acme", None):
        big.views.onboardings_per_minute(tenant, 1e9)
        big.views.alerts(tenant, 1e9)
    assert len(plans) == 4, plans
    for plan in plans[0::2]:
        assert "USING INDEX ix_devices_onboarded_at (onboarded_at>? AND onboarded_at<?)" in plan
    for plan in plans[1::2]:
        assert "USING INDEX ix_devices_not_after (not_after<?)" in plan, plan


# -- presence through the real broker ----------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    root = tmp_path_factory.mktemp("presence")
    ca = CertificateAuthority.load_or_create(root / "ca")
    managed = ManagedBroker(root / "broker", ca)
    managed.start()
    policy = MosquittoDynsec(ca, "127.0.0.1", managed.admin_port)
    policy.restore_denials([])
    store = Store(root / "p.sqlite")
    store.tenants.create("acme")
    store.batches.create("b1", "acme")
    intake = EventIntake(store, ca, "127.0.0.1", managed.admin_port)
    yield {"ca": ca, "broker": managed, "store": store, "root": root, "intake": intake}
    intake.close()
    store.close()
    policy.close()
    managed.stop()


def _registered(live: dict[str, Any]) -> Device:
    device = Device(live["ca"], live["root"])
    live["store"].batches.import_devices("b1", [f"{device.id},{device.pub.hex()}"], tenant="acme")
    return device


def _online_flag(store: Store, device_id: str) -> bool:
    row = store.db.one("SELECT online FROM devices WHERE device_id = :d", {"d": device_id})
    assert row is not None
    return bool(row["online"])


def _wait_for(check: object, what: str, timeout: float = 5.0) -> None:
    # The intake records on its own network thread; poll the store it writes.
    deadline = time.monotonic() + timeout
    done = threading.Event()
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        done.wait(0.02)
    pytest.fail(f"timed out waiting for {what}")


def test_presence_follows_online_events_and_closed_connections(live: dict[str, Any]) -> None:
    store: Store = live["store"]
    device = _registered(live)
    start = _changed_at(store, device.id)
    device.connect(live["broker"].port)
    try:
        device.publish(
            device.topic(leaf="event"), json.dumps({"event": "online", "cmd_seq": 0}).encode()
        )
        _wait_for(lambda: _online_flag(store, device.id), "online")
        assert _changed_at(store, device.id) > start
        online_at = _changed_at(store, device.id)
    finally:
        device.close()  # a clean DISCONNECT
    _wait_for(lambda: not _online_flag(store, device.id), "offline after disconnect")
    assert _changed_at(store, device.id) > online_at
    # A link that breaks without DISCONNECT is reported too.
    device.connect(live["broker"].port)
    device.publish(
        device.topic(leaf="event"), json.dumps({"event": "online", "cmd_seq": 0}).encode()
    )
    _wait_for(lambda: _online_flag(store, device.id), "online again")
    assert device.client is not None
    device.client.socket().close()  # type: ignore[union-attr]
    _wait_for(lambda: not _online_flag(store, device.id), "offline after a broken link")
    device.client.loop_stop()
    device.client = None


def test_a_forged_presence_report_from_a_device_changes_nothing(live: dict[str, Any]) -> None:
    store: Store = live["store"]
    victim, forger = _registered(live), _registered(live)
    victim.connect(live["broker"].port)
    forger.connect(live["broker"].port)
    try:
        online = json.dumps({"event": "online", "cmd_seq": 0}).encode()
        victim.publish(victim.topic(leaf="event"), online)
        _wait_for(lambda: _online_flag(store, victim.id), "victim online")
        forger.publish("$CONTROL/qlink/v1/presence", json.dumps({"client": victim.id}).encode())
        # Handled in order: once the forger's own online event is recorded, the forged report
        # would have been too.
        forger.publish(forger.topic(leaf="event"), online)
        _wait_for(lambda: _online_flag(store, forger.id), "forger online")
        assert _online_flag(store, victim.id)
        assert [c.value for c in forger.subscribe("$CONTROL/qlink/v1/presence")] == [0x80]
    finally:
        victim.close()
        forger.close()
