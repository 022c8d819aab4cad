"""OTA rollouts (host/server/rollouts.py, store/rollouts.py, docs/ota.md "Rollout"): which
devices are offered a release, what their events make of it, halting, pausing, aborting, and
the operator API and CLI over them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cliutil import run_qlink
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hil.simdevice import ApiResponse, SimDevice
from host.server.application import Application
from host.server.commands import CommandError, CommandSigner
from host.server.events import EventIntake
from host.server.policy import MemoryPolicy
from host.server.releases import ReleaseSigner, build_release
from host.server.settings import Settings
from host.server.store import Actor, Conflict, Invalid, NotFound
from host.server.store.rollouts import share

ALICE = Actor("operator:alice", "198.51.100.4")
VERSION = "0.2.0"
RELEASE = f"unix-{VERSION}"
BODY = bytes(range(256)) * 600  # 150 KiB: a payload of three 64 KiB chunks


class RecordingLink:
    """Stands in for the broker connection: what would have been published."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def send(self, topic: str, payload: bytes, *, wait: bool = True) -> None:
        self.sent.append((topic, payload))

    def close(self) -> None:
        pass


def publish(app: Application, tmp: Path, version: str = VERSION) -> str:
    """A small release of the unix board, published; its ID."""
    tree = tmp / f"tree-{version}"
    (tree / "agent").mkdir(parents=True)
    (tree / "agent" / "version.py").write_text(f'VERSION = "{version}"\n')
    (tree / "main.py").write_bytes(b"# " + BODY.hex().encode()[: len(BODY)] + b"\n")
    signer = ReleaseSigner.load_or_create(app.ca)
    out = build_release(tree, version, "unix", "0.0.0", signer, tmp / "r.qota")
    return app.releases.publish(out, ALICE).id


def ota_key(app: Application, device_id: str) -> ec.EllipticCurvePrivateKey:
    """Give the device an OTA key, as its proof would have; the private half."""
    key = ec.generate_private_key(ec.SECP256R1())
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    app.store.db.write_one(
        "UPDATE devices SET ota_key = :k WHERE device_id = :d", {"k": point, "d": device_id}
    )
    return key


def onboard(app: Application, d: SimDevice) -> None:
    ob = app.onboarding
    h = ob.hello({"device_id": d.device_id, "public_key": d.public_key.hex()})
    ob.proof(d.proof_body(ApiResponse(200, h)))


class Rig:
    def __init__(self, app: Application, link: RecordingLink, tmp: Path) -> None:
        self.app, self.link, self.tmp = app, link, tmp
        self.keys: dict[str, ec.EllipticCurvePrivateKey] = {}
        self.release = ""

    def add(self, n: int, batch: str = "b", *, key: bool = True) -> list[str]:
        """`n` new devices of `batch`, onboarded (with an OTA key unless `key` is False)."""
        devs = [SimDevice("https://localhost", self.app.ca.root_der()) for _ in range(n)]
        self.app.import_devices(batch, [d.csv_line() for d in devs])
        for d in devs:
            onboard(self.app, d)
            if key:
                self.keys[d.device_id] = ota_key(self.app, d.device_id)
        return sorted(d.device_id for d in devs)

    @property
    def ids(self) -> list[str]:
        return sorted(d.device_id for d in self.app.devices(batch="b"))

    def intake(self) -> EventIntake:
        """The event intake's logic without its broker connection."""
        ev = EventIntake.__new__(EventIntake)
        ev.store = self.app.store
        ev.signer = CommandSigner.load_or_create(self.app.ca)
        ev.received = ev.resent = 0
        ev.drift_pct = 50
        ev._on_online = None
        ev._on_drift = None
        ev.rollouts = self.app.rollouts
        ev.link = self.link  # type: ignore[assignment]
        return ev

    def event(self, device_id: str, doc: dict[str, Any], tenant: str = "acme") -> None:
        msg = _Msg(f"qlink/{tenant}/{device_id}/event", json.dumps(doc).encode())
        self.intake()._on_message(None, None, msg)  # type: ignore[arg-type]

    def ota(self, device_id: str, state: str, reason: str | None = None) -> None:
        doc: dict[str, Any] = {"event": "ota", "release": self.release, "state": state}
        if reason is not None:
            doc["reason"] = reason
        self.event(device_id, doc)

    def online(self, device_id: str, cmd_seq: int = 0) -> None:
        self.event(device_id, {"event": "online", "fw": "0.1.0", "cmd_seq": cmd_seq})

    def states(self, rollout_id: int) -> dict[str, str]:
        return {d.device_id: d.state for d in self.app.rollouts.status(rollout_id).devices}

    def ota_commands(self, device_id: str) -> list[tuple[str, dict[str, Any]]]:
        return [(c.state, c.args) for c in self.app.commands(device_id) if c.kind == "ota"]

    def rollout_audit(self) -> list[str]:
        return [e.action for e in self.app.audit() if e.action.startswith("ota.")]


class _Msg:
    def __init__(self, topic: str, payload: bytes) -> None:
        self.topic, self.payload = topic, payload


def make_rig(tmp_path: Path, devices: int = 6) -> Rig:
    app = Application.for_server(Settings(data_dir=tmp_path), broker_port=1, policy=MemoryPolicy())
    link = RecordingLink()
    app.__dict__["command_link"] = link
    app.create_tenant("acme")
    app.create_batch("b", "acme")
    r = Rig(app, link, tmp_path)
    if devices:
        r.add(devices)
    r.release = publish(app, tmp_path)
    return r


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = make_rig(tmp_path)
    yield r
    r.app.close()


# -- the share -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("percent", "devices", "expected"),
    [(100, 6, 6), (50, 6, 3), (34, 6, 3), (33, 6, 2), (1, 6, 1), (1, 1000, 10), (1, 1001, 11)],
)
def test_the_share_is_rounded_up(percent: int, devices: int, expected: int) -> None:
    assert share(percent, devices) == expected


def test_a_rollout_offers_the_rounded_up_share_in_device_id_order(rig: Rig) -> None:
    out = rig.app.rollouts.create(rig.release, "b", 34, tenant="acme", actor=ALICE)
    first = rig.ids[:3]  # ceil(34 % of 6) = 3
    assert [d.device_id for d in out.devices] == first
    assert out.state == "active" and out.counts["offered"] == 3 and out.failures == 0
    size = rig.app.releases.release(rig.release).payload_size
    for device_id in first:
        assert rig.ota_commands(device_id) == [("queued", {"release": rig.release, "size": size})]
    for device_id in rig.ids[3:]:
        assert rig.ota_commands(device_id) == []
    # Signed and published as every command: kind ota, its args.
    bodies = [json.loads(p[64:]) for _t, p in rig.link.sent]
    assert [(b["device_id"], b["kind"], b["args"]["release"]) for b in bodies] == [
        (d, "ota", rig.release) for d in first
    ]
    assert all(d.seq == 1 for d in out.devices)
    [created] = [e for e in rig.app.audit(action="ota.rollout_create")]
    assert created.actor == ALICE.name and created.detail["offered"] == 3


def test_a_device_without_an_ota_key_is_refused_no_ota_key_and_is_not_a_failure(
    rig: Rig,
) -> None:
    keyless = rig.add(1, key=False)[0]
    out = rig.app.rollouts.create(rig.release, "b", actor=ALICE)  # max failures 0
    row = next(d for d in out.devices if d.device_id == keyless)
    assert (row.state, row.reason, row.seq) == ("refused", "no_ota_key", None)
    assert rig.ota_commands(keyless) == []
    assert out.state == "active" and out.failures == 0 and out.counts["offered"] == 6


def test_a_rollout_whose_whole_share_lacks_ota_keys_is_done_at_once(tmp_path: Path) -> None:
    r = make_rig(tmp_path, devices=0)
    try:
        keyless = r.add(2, key=False)
        out = r.app.rollouts.create(r.release, "b", actor=ALICE)
        assert out.state == "done" and out.failures == 0
        assert [(d.device_id, d.reason) for d in out.devices] == [
            (k, "no_ota_key") for k in keyless
        ]
        assert r.link.sent == []
    finally:
        r.app.close()


def test_the_first_failure_halts_a_rollout_with_max_failures_0(rig: Rig) -> None:
    out = rig.app.rollouts.create(rig.release, "b", 50, actor=ALICE)
    a, b, c = (d.device_id for d in out.devices)
    rig.event(b, {"event": "command", "seq": 1, "status": "accepted"})  # b took the offer
    rig.ota(a, "refused", "wrong_board")
    now = rig.app.rollouts.status(out.id)
    assert now.state == "halted" and now.failures == 1
    assert now.detail is not None and "more than max failures 0" in now.detail
    assert a in now.detail and "wrong_board" in now.detail
    # Offers no device accepted are expired (not sent again); the accepted one stays.
    assert rig.ota_commands(c)[0][0] == "expired"
    assert rig.ota_commands(b)[0][0] == "delivered"
    rig.link.sent.clear()
    rig.online(c)
    assert rig.link.sent == []
    # No new offer either: a device outside the share with no row gets nothing.
    newcomer = rig.add(1)[0]
    rig.online(newcomer)
    assert rig.ota_commands(newcomer) == [] and rig.link.sent == []
    halts = [e for e in rig.app.audit(action="ota.rollout_halted")]
    assert len(halts) == 1 and halts[0].actor == "policy:ota-rollout"


def test_a_rollout_halts_only_once_failures_pass_max_failures(rig: Rig) -> None:
    out = rig.app.rollouts.create(rig.release, "b", max_failures=2, actor=ALICE)
    ids = [d.device_id for d in out.devices]
    rig.ota(ids[0], "refused", "not_newer")
    rig.ota(ids[1], "downloading")
    rig.ota(ids[1], "staged")
    rig.ota(ids[1], "trial")
    rig.ota(ids[1], "rolled_back", "trial_failed")
    assert rig.app.rollouts.status(out.id).state == "active"  # 2 failures: not past 2
    rig.ota(ids[2], "refused", "altered")
    now = rig.app.rollouts.status(out.id)
    assert (now.state, now.failures) == ("halted", 3)
    assert now.counts["refused"] == 2 and now.counts["rolled_back"] == 1
    # Devices already under way still report: their progress is kept after the halt.
    rig.ota(ids[3], "downloading")
    assert rig.states(out.id)[ids[3]] == "downloading"


def test_events_never_move_a_device_backwards(rig: Rig) -> None:
    out = rig.app.rollouts.create(rig.release, "b", max_failures=5, actor=ALICE)
    d, e = out.devices[0].device_id, out.devices[1].device_id
    rig.ota(d, "trial")  # steps may be skipped (an event lost)...
    rig.ota(d, "staged")  # ...but a late one never moves back
    rig.ota(d, "downloading")
    assert rig.states(out.id)[d] == "trial"
    rig.ota(d, "committed")
    rig.ota(d, "committed")  # a duplicate (QoS 1)
    rig.ota(d, "rolled_back", "trial_failed")
    rig.ota(d, "refused", "busy")
    assert rig.states(out.id)[d] == "committed"
    rig.ota(e, "refused", "busy")
    rig.ota(e, "committed")
    assert rig.states(out.id)[e] == "refused"
    steps = [x.action for x in rig.app.audit(target=f"device:{d}") if x.action.startswith("ota")]
    assert sorted(steps) == ["ota.device_committed", "ota.device_trial"]
    assert rig.app.rollouts.status(out.id).failures == 1


def test_a_rollout_is_done_once_every_device_ended(rig: Rig) -> None:
    out = rig.app.rollouts.create(rig.release, "b", max_failures=1, actor=ALICE)
    ids = [d.device_id for d in out.devices]
    for device_id in ids[:-1]:
        rig.ota(device_id, "committed")
    assert rig.app.rollouts.status(out.id).state == "active"
    rig.ota(ids[-1], "rolled_back", "trial_failed")
    now = rig.app.rollouts.status(out.id)
    assert now.state == "done" and now.counts["committed"] == 5
    assert "ota.rollout_done" in rig.rollout_audit()


def test_a_partial_rollout_is_not_done_while_its_share_has_room(rig: Rig) -> None:
    out = rig.app.rollouts.create(rig.release, "b", 50, actor=ALICE)
    for d in out.devices:
        rig.ota(d.device_id, "committed")
    assert rig.app.rollouts.status(out.id).state == "done"  # 3 of 6: the share is full
    # A newer rollout of a larger batch: one more device makes room for one more offer.
    rig.add(2)  # 8 devices: ceil(50 % of 8) = 4
    second = rig.app.rollouts.create(rig.release, "b", 50, max_failures=9, actor=ALICE)
    assert len(second.devices) == 4


def test_pause_stops_offers_to_devices_coming_online_and_resume_restarts_them(rig: Rig) -> None:
    out = rig.app.rollouts.create(rig.release, "b", 50, actor=ALICE)  # 3 of 6
    late = rig.add(2)  # 8 devices: the share is now 4, room for one
    paused = rig.app.rollouts.pause(out.id, actor=ALICE)
    assert paused.state == "paused"
    rig.link.sent.clear()
    rig.online(late[0])
    assert rig.ota_commands(late[0]) == [] and rig.link.sent == []
    # The open offers stay open: a device of the share still gets its head while paused.
    doc = rig.app.rollouts.head(rig.release, out.devices[0].device_id)
    assert doc["release"] == rig.release
    assert rig.app.rollouts.resume(out.id, actor=ALICE).state == "active"
    rig.online(late[0])
    [(state, args)] = rig.ota_commands(late[0])
    assert state == "queued" and args["release"] == rig.release
    # Sent at once over the intake's link, with the device's other pending commands.
    assert [json.loads(p[64:])["kind"] for _t, p in rig.link.sent] == ["ota"]
    assert rig.states(out.id)[late[0]] == "offered"
    # The share is full now: the other newcomer is not offered.
    rig.online(late[1])
    assert rig.ota_commands(late[1]) == []
    assert rig.rollout_audit().count("ota.rollout_paused") == 1
    assert rig.rollout_audit().count("ota.rollout_active") == 1


def test_an_offer_that_expired_untaken_is_made_again_when_the_device_comes_online(
    rig: Rig,
) -> None:
    out = rig.app.rollouts.create(rig.release, "b", 50, actor=ALICE)
    d = out.devices[0].device_id
    rig.app.store.db.write_one(
        "UPDATE commands SET expires_at = 1 WHERE device_id = :d", {"d": d}
    )  # off for longer than its offer lived
    rig.link.sent.clear()
    rig.online(d)
    assert [c[0] for c in rig.ota_commands(d)] == ["queued", "expired"]
    assert [json.loads(p[64:])["seq"] for _t, p in rig.link.sent] == [2]
    [row] = [x for x in rig.app.rollouts.status(out.id).devices if x.device_id == d]
    assert (row.state, row.seq) == ("offered", 2)
    # A live offer is not made twice.
    rig.online(d, cmd_seq=2)
    assert len(rig.ota_commands(d)) == 2


def test_a_device_that_cannot_take_its_offer_now_is_left_out(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    send = rig.app.send_command
    first = rig.ids[0]

    def refuse_first(device_id: str, *a: Any, **kw: Any) -> Any:
        if device_id == first:  # disabled between the choice and the command
            raise Conflict(f"device {device_id} is disabled; a command cannot reach it")
        return send(device_id, *a, **kw)

    monkeypatch.setattr(rig.app, "send_command", refuse_first)
    out = rig.app.rollouts.create(rig.release, "b", 50, actor=ALICE)
    assert [d.device_id for d in out.devices] == rig.ids[1:3]
    for d in out.devices:
        rig.ota(d.device_id, "committed")
    assert rig.app.rollouts.status(out.id).state == "active"  # the share has room: 2 of 3
    monkeypatch.undo()
    rig.online(first)  # it comes back: offered now
    assert rig.states(out.id)[first] == "offered"


def test_online_offers_nothing_and_changes_nothing_while_no_rollout_runs(rig: Rig) -> None:
    before = rig.app.audit()
    rig.online(rig.ids[0])
    assert rig.link.sent == [] and rig.ota_commands(rig.ids[0]) == []
    assert rig.app.audit() == before


def test_a_keyless_device_coming_online_is_recorded_refused(rig: Rig) -> None:
    out = rig.app.rollouts.create(rig.release, "b", actor=ALICE)
    keyless = rig.add(1, key=False)[0]
    rig.online(keyless)
    row = rig.app.rollouts.status(out.id).devices
    assert [(d.state, d.reason) for d in row if d.device_id == keyless] == [
        ("refused", "no_ota_key")
    ]
    assert rig.ota_commands(keyless) == [] and rig.app.rollouts.status(out.id).state == "active"


def test_abort_expires_the_offers_not_taken_and_ends_heads(rig: Rig) -> None:
    out = rig.app.rollouts.create(rig.release, "b", actor=ALICE)
    a, b = out.devices[0].device_id, out.devices[1].device_id
    rig.event(a, {"event": "command", "seq": 1, "status": "accepted"})
    aborted = rig.app.rollouts.abort(out.id, actor=ALICE)
    assert aborted.state == "aborted"
    assert rig.ota_commands(a)[0][0] == "delivered" and rig.ota_commands(b)[0][0] == "expired"
    from host.server.rollouts import OtaRefused

    with pytest.raises(OtaRefused) as refused:
        rig.app.rollouts.head(rig.release, a)
    assert (refused.value.status, refused.value.code) == (404, "not_offered")
    [ev] = [e for e in rig.app.audit(action="ota.rollout_aborted")]
    assert ev.detail["expired_offers"] == 5 and ev.actor == ALICE.name
    # An aborted rollout ends: it cannot be paused, resumed or aborted again.
    for change in (rig.app.rollouts.pause, rig.app.rollouts.resume, rig.app.rollouts.abort):
        with pytest.raises(Conflict, match="is aborted"):
            change(out.id, actor=ALICE)
    # The batch is free for a new rollout.
    assert rig.app.rollouts.create(rig.release, "b", actor=ALICE).state == "active"


def test_pause_and_resume_only_from_the_states_they_leave(rig: Rig) -> None:
    out = rig.app.rollouts.create(rig.release, "b", actor=ALICE)
    with pytest.raises(Conflict, match="only a rollout that is paused can be resumed"):
        rig.app.rollouts.resume(out.id, actor=ALICE)
    rig.app.rollouts.pause(out.id, actor=ALICE)
    with pytest.raises(Conflict, match="only a rollout that is active can be paused"):
        rig.app.rollouts.pause(out.id, actor=ALICE)
    rig.ota(rig.ids[0], "refused", "bad_signature")  # halts from paused too
    with pytest.raises(Conflict, match=r"is halted.*abort it"):
        rig.app.rollouts.resume(out.id, actor=ALICE)
    assert rig.app.rollouts.status(out.id).state == "halted"


@pytest.mark.parametrize(
    "doc",
    [
        {"event": "ota", "release": "unix-9.9.9", "state": "committed"},  # no such rollout
        {"event": "ota", "release": RELEASE, "state": "offered"},  # not the device's to say
        {"event": "ota", "release": RELEASE, "state": "installed"},
        {"event": "ota", "release": RELEASE},
        {"event": "ota", "release": 7, "state": "committed"},
        {"event": "ota", "release": RELEASE, "state": "refused", "reason": 5},
        {"event": "ota", "release": "x" * 200, "state": "committed"},
    ],
)
def test_an_event_for_no_rollout_or_a_malformed_one_changes_nothing(
    rig: Rig, doc: dict[str, Any]
) -> None:
    out = rig.app.rollouts.create(rig.release, "b", actor=ALICE)
    before = (rig.app.rollouts.status(out.id), rig.app.audit())
    rig.event(out.devices[0].device_id, doc)
    assert (rig.app.rollouts.status(out.id), rig.app.audit()) == before


def test_an_event_of_a_device_outside_the_rollout_changes_nothing(rig: Rig) -> None:
    out = rig.app.rollouts.create(rig.release, "b", 50, actor=ALICE)
    before = (rig.app.rollouts.status(out.id), rig.app.audit())
    rig.ota(rig.ids[-1], "refused", "busy")  # in the batch, not in the share
    rig.event(  # a device of the share, on another tenant's prefix
        out.devices[0].device_id,
        {"event": "ota", "release": rig.release, "state": "refused"},
        tenant="globex",
    )
    rig.event("ab" * 32, {"event": "ota", "release": rig.release, "state": "refused"})
    assert (rig.app.rollouts.status(out.id), rig.app.audit()) == before
    # The same event on the device's own prefix counts (and, max failures 0, halts).
    rig.ota(out.devices[0].device_id, "refused", "busy")
    assert rig.app.rollouts.status(out.id).state == "halted"


# -- the store, on both databases -----------------------------------------------------------------
def test_the_store_keeps_rows_forward_and_expires_offers(database: str | Path) -> None:
    from host.server.store import LOCAL, Store

    store = Store(database)
    try:
        store.tenants.create("acme", LOCAL)
        store.batches.create("b", "acme", None, LOCAL)
        devs = [SimDevice("https://localhost", b"") for _ in range(4)]
        store.batches.import_devices("b", [d.csv_line() for d in devs], tenant="acme")
        ids = sorted(d.device_id for d in devs)
        store.db.write_one("UPDATE devices SET state = 'onboarded', ota_key = :k", {"k": b"k"})
        store.db.write_one("UPDATE devices SET ota_key = NULL WHERE device_id = :d", {"d": ids[3]})
        store.releases.insert(
            RELEASE, version=VERSION, min_version="0.0.0", board="unix", files=1, size=1,
            payload_size=48, manifest_sha256="0" * 64, published_at=1.0, actor=LOCAL,
        )  # fmt: skip
        batch = store.rollouts.batch("b", "acme")
        found = store.rollouts.candidates(int(batch["id"]))
        assert [(c.device_id, c.has_key) for c in found] == [(d, d != ids[3]) for d in ids]
        rid = store.rollouts.create(
            release_id=RELEASE, batch_id=int(batch["id"]), batch="b", tenant="acme",
            percent=75, max_failures=0, offered=ids[:2], no_key=[ids[3]], actor=LOCAL,
        )  # fmt: skip
        for d in ids[:2]:
            dev = store.devices.get(d)
            assert dev is not None
            cmd = store.commands.create(dev, "ota", {"release": RELEASE, "size": 48}, 60, LOCAL)
            store.rollouts.commanded(rid, d, cmd.seq)
        assert store.rollouts.open_offer(RELEASE, ids[0]) == rid
        # ids[2] has no row: an `online` of it may offer it.
        assert store.rollouts.to_offer(ids[2]) is not None
        assert store.rollouts.to_offer(ids[0]) is None
        assert store.rollouts.add_device(rid, ids[2], True) is True
        assert store.rollouts.add_device(rid, ids[2], True) is False
        a = store.rollouts.advance(RELEASE, ids[0], "staged", None, LOCAL)
        assert a is not None and a.changed and a.failures == 0
        b = store.rollouts.advance(RELEASE, ids[0], "downloading", None, LOCAL)
        assert b is not None and not b.changed
        c = store.rollouts.advance(RELEASE, ids[1], "refused", "x" * 100, LOCAL)
        assert c is not None and c.changed and c.failures == 1
        assert store.rollouts.advance("unix-9.9.9", ids[0], "trial", None, LOCAL) is None
        summary = store.rollouts.summary(rid, "acme")
        assert summary is not None and summary.failures == 1  # no_ota_key is not counted
        assert (summary.counts["staged"], summary.counts["refused"]) == (1, 2)
        assert summary.counts["offered"] == 1 and summary.batch == "b"
        assert store.rollouts.summary(rid, "globex") is None
        assert [r.id for r in store.rollouts.list("acme")] == [rid]
        [row] = [d for d in store.rollouts.devices(rid) if d.device_id == ids[1]]
        assert row.reason == "x" * 64
        assert store.rollouts.set_state(rid, "aborted", ("active",), LOCAL, expire=True)
        assert not store.rollouts.set_state(rid, "paused", ("active",), LOCAL)
        assert store.rollouts.open_offer(RELEASE, ids[0]) is None
        assert [c.state for c in store.commands.list(ids[0])] == ["expired"]
        [ev] = store.audit.list(action="ota.rollout_aborted")
        assert ev.detail["expired_offers"] == 2
    finally:
        store.close()


# -- bad inputs ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"percent": 0}, Invalid, "percent must be a whole number from 1 to 100, not 0"),
        ({"percent": 101}, Invalid, "percent must be a whole number from 1 to 100, not 101"),
        ({"percent": True}, Invalid, "percent must be"),
        ({"max_failures": -1}, Invalid, "max failures must be a whole number of 0 or more"),
        ({"batch": "nope"}, NotFound, "batch 'nope' does not exist"),
        ({"release": "unix-9.9.9"}, NotFound, "release 'unix-9.9.9' does not exist"),
        ({"tenant": "globex"}, NotFound, "batch 'b' does not exist"),  # another tenant's batch
    ],
)
def test_a_bad_rollout_is_refused_and_nothing_is_stored(
    rig: Rig, kw: dict[str, Any], error: type[Exception], match: str
) -> None:
    rig.app.create_tenant("globex")
    args: dict[str, Any] = {"release": rig.release, "batch": "b", "tenant": "acme", **kw}
    with pytest.raises(error, match=match):
        rig.app.rollouts.create(args.pop("release"), args.pop("batch"), actor=ALICE, **args)
    assert rig.app.rollouts.list() == []
    assert all(rig.ota_commands(d) == [] for d in rig.ids)
    assert rig.link.sent == [] and rig.rollout_audit() == []


def test_the_percentage_bounds_themselves_are_accepted(rig: Rig) -> None:
    one = rig.app.rollouts.create(rig.release, "b", 1, actor=ALICE)
    assert len(one.devices) == 1
    rig.app.rollouts.abort(one.id, actor=ALICE)
    assert len(rig.app.rollouts.create(rig.release, "b", 100, actor=ALICE).devices) == 6


def test_a_second_open_rollout_of_a_batch_is_refused(rig: Rig) -> None:
    out = rig.app.rollouts.create(rig.release, "b", 50, actor=ALICE)
    rig.app.rollouts.pause(out.id, actor=ALICE)
    sent = len(rig.link.sent)
    with pytest.raises(Conflict, match=f"already has rollout {out.id} \\(paused\\).*abort"):
        rig.app.rollouts.create(rig.release, "b", actor=ALICE)
    assert len(rig.app.rollouts.list()) == 1 and len(rig.link.sent) == sent


def test_a_rollout_of_another_tenant_does_not_exist(rig: Rig) -> None:
    out = rig.app.rollouts.create(rig.release, "b", actor=ALICE)
    for call in (rig.app.rollouts.status, rig.app.rollouts.pause, rig.app.rollouts.abort):
        with pytest.raises(NotFound, match=f"rollout {out.id} does not exist"):
            call(out.id, "globex")
    assert rig.app.rollouts.list("globex") == []
    assert rig.app.rollouts.status(out.id).state == "active"


def test_offers_are_stored_when_the_broker_is_down(rig: Rig) -> None:
    def down(topic: str, payload: bytes, *, wait: bool = True) -> None:
        raise CommandError("the broker is down")

    rig.link.send = down  # type: ignore[method-assign]
    out = rig.app.rollouts.create(rig.release, "b", 50, actor=ALICE)
    assert all(d.seq == 1 for d in out.devices)
    assert rig.ota_commands(out.devices[0].device_id)[0][0] == "queued"


# -- operator API --------------------------------------------------------------------------------
def test_the_operator_api_creates_shows_lists_and_changes_rollouts(tmp_path: Path) -> None:
    from apiutil import operator_api

    r = make_rig(tmp_path)
    r.app.close()
    roles = [("acme", "operator"), ("acme", "viewer"), ("globex", "operator")]
    with operator_api(Settings(data_dir=tmp_path), roles) as api:
        body = {"release": r.release, "batch": "b", "percent": 50, "max_failures": 1}
        assert api.request("POST", "/v1/admin/ota/rollouts", "acme-viewer", body).status_code == 403
        made = api.request("POST", "/v1/admin/ota/rollouts", "acme-operator", body)
        assert made.status_code == 201, made.text
        doc = made.json()
        assert doc["state"] == "active" and len(doc["devices"]) == 3
        assert doc["counts"]["offered"] == 3 and doc["tenant"] == "acme"
        path = f"/v1/admin/ota/rollouts/{doc['id']}"
        got = api.request("GET", path, "acme-viewer").json()
        assert got["devices"] == doc["devices"]
        [listed] = api.request("GET", "/v1/admin/ota/rollouts", "acme-viewer").json()
        assert listed["id"] == doc["id"] and "devices" not in listed
        # Another tenant: the rollout and the batch do not exist.
        assert api.request("GET", path, "globex-operator").status_code == 404
        assert api.request("GET", "/v1/admin/ota/rollouts", "globex-operator").json() == []
        other = api.request("POST", "/v1/admin/ota/rollouts", "globex-operator", body)
        assert (other.status_code, other.json()["error"]) == (404, "not_found")
        assert api.request("POST", f"{path}/pause", "acme-viewer").status_code == 403
        assert api.request("POST", f"{path}/pause", "acme-operator").json()["state"] == "paused"
        again = api.request("POST", f"{path}/pause", "acme-operator")
        assert (again.status_code, again.json()["error"]) == (409, "conflict")
        assert api.request("POST", f"{path}/resume", "acme-operator").json()["state"] == "active"
        assert api.request("POST", f"{path}/abort", "acme-operator").json()["state"] == "aborted"
        assert api.request("GET", "/v1/admin/ota/rollouts/999", "acme-viewer").status_code == 404
        bad = api.request("GET", "/v1/admin/ota/rollouts/x", "acme-viewer")
        assert bad.status_code == 400


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"percent": 0}, "percent"),
        ({"percent": 101}, "percent"),
        ({"max_failures": -1}, "max_failures"),
        ({"release": "unix-9.9.9"}, "release"),
        ({"batch": "nope"}, "batch"),
    ],
)
def test_the_operator_api_refuses_a_bad_rollout_and_stores_nothing(
    tmp_path: Path, change: dict[str, Any], field: str
) -> None:
    from apiutil import operator_api

    r = make_rig(tmp_path, devices=2)
    r.app.close()
    with operator_api(Settings(data_dir=tmp_path), [("acme", "operator")]) as api:
        body = {"release": r.release, "batch": "b", **change}
        res = api.request("POST", "/v1/admin/ota/rollouts", "acme-operator", body)
        assert res.status_code in (400, 404)
        assert field.replace("_", " ") in res.json()["detail"] or field in res.json()["detail"]
        assert api.request("GET", "/v1/admin/ota/rollouts", "acme-operator").json() == []
        assert api.app.rollouts.list() == []


# -- CLI -----------------------------------------------------------------------------------------
def test_the_cli_creates_shows_pauses_and_lists_rollouts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    r = make_rig(tmp_path)
    ids = r.ids
    r.app.close()
    dd = ("--data-dir", str(tmp_path))
    code, out, err = run_qlink(
        monkeypatch, capsys, "ota", "rollout", "create", r.release, "--batch", "b",
        "--percent", "50", "--max-failures", "1", "--json", *dd,
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert [d["device_id"] for d in doc["devices"]] == ids[:3]
    assert (doc["percent"], doc["max_failures"], doc["state"]) == (50, 1, "active")
    rid = str(doc["id"])
    code, out, _ = run_qlink(monkeypatch, capsys, "ota", "rollout", "status", rid, *dd)
    assert code == 0
    assert "3 offered" in out and "active" in out and ids[0][:16] in out and "(UTC)" in out
    code, out, _ = run_qlink(monkeypatch, capsys, "ota", "rollout", "pause", rid, "--json", *dd)
    assert code == 0 and json.loads(out)["state"] == "paused"
    code, out, _ = run_qlink(monkeypatch, capsys, "ota", "rollout", "resume", rid, *dd)
    assert code == 0 and "active" in out
    code, out, _ = run_qlink(monkeypatch, capsys, "ota", "rollout", "list", "--json", *dd)
    assert code == 0 and [x["id"] for x in json.loads(out)] == [int(rid)]
    code, out, _ = run_qlink(monkeypatch, capsys, "ota", "rollout", "abort", rid, *dd)
    assert code == 0 and "aborted" in out
    code, _, err = run_qlink(monkeypatch, capsys, "ota", "rollout", "abort", rid, *dd)
    assert code == 1 and "is aborted" in err


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("--percent", "0"), "percent must be a whole number from 1 to 100"),
        (("--max-failures", "-1"), "max failures must be a whole number of 0 or more"),
        (("--tenant", "globex"), "does not exist"),
    ],
)
def test_the_cli_refuses_a_bad_rollout_and_stores_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    match: str,
) -> None:
    r = make_rig(tmp_path, devices=1)
    r.app.close()
    dd = ("--data-dir", str(tmp_path))
    code, _, err = run_qlink(
        monkeypatch, capsys, "ota", "rollout", "create", r.release, "--batch", "b", *args, *dd
    )
    assert code == 1 and match in " ".join(err.split())
    code, out, _ = run_qlink(monkeypatch, capsys, "ota", "rollout", "list", "--json", *dd)
    assert json.loads(out) == []
