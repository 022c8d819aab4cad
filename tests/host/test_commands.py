"""The command channel's server side (host/server/commands.py, events.py, store/commands.py):
what the server signs, the states a command goes through, and what a device's events change."""

from __future__ import annotations

import base64
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from hil.simdevice import ApiResponse, SimDevice
from host.server.application import Application
from host.server.ca import CaError
from host.server.commands import COMMAND_EKU, LABEL, CommandSigner, Online, parse_event
from host.server.events import EventIntake
from host.server.policy import MemoryPolicy
from host.server.settings import Settings
from host.server.store import Actor, Conflict, Invalid, NotFound

ALICE = Actor("operator:alice", "198.51.100.4")


class RecordingLink:
    """Stands in for the broker connection: what would have been published."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.fail = fail

    def send(self, topic: str, payload: bytes, *, wait: bool = True) -> None:
        from host.server.commands import CommandError

        if self.fail:
            raise CommandError("the broker is down")
        self.sent.append((topic, payload))

    def close(self) -> None:
        pass


class Rig:
    def __init__(self, app: Application, device: SimDevice, link: RecordingLink) -> None:
        self.app, self.device, self.link = app, device, link

    def onboard(self, d: SimDevice | None = None) -> dict[str, Any]:
        d = d or self.device
        ob = self.app.onboarding
        h = ob.hello({"device_id": d.device_id, "public_key": d.public_key.hex()})
        return ob.proof(d.proof_body(ApiResponse(200, h)))[1]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    built = Application.for_server(
        Settings(data_dir=tmp_path), broker_port=1, policy=MemoryPolicy()
    )
    link = RecordingLink()
    built.__dict__["command_link"] = link
    built.create_tenant("acme")
    built.create_batch("b", "acme")
    d = SimDevice("https://localhost", built.ca.root_der())
    built.import_devices("b", [d.csv_line()])
    r = Rig(built, d, link)
    r.onboard()
    yield r
    built.close()


def verify(signer_der: bytes, payload: bytes) -> dict[str, Any]:
    """What a device does: the signature over label + body, then the body."""
    cert = x509.load_der_x509_certificate(signer_der)
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    sig, body = payload[:64], payload[64:]
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    key.verify(der, LABEL + body, ec.ECDSA(hashes.SHA256()))
    doc = json.loads(body)
    assert isinstance(doc, dict)
    return doc


def test_the_command_signer_is_certified_by_the_root_for_commands_only(rig: Rig) -> None:
    ca = rig.app.ca
    signer = CommandSigner.load_or_create(ca)
    signer.cert.verify_directly_issued_by(ca.root_cert)
    eku = signer.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [COMMAND_EKU]
    bc = signer.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert not bc.ca
    assert stat.S_IMODE((ca.dir / "command.key").stat().st_mode) == 0o600
    # Loaded, not made again: the devices keep the certificate they stored.
    assert CommandSigner.load_or_create(ca).cert_der == signer.cert_der


def test_a_signer_certificate_is_renewed_over_the_same_key(rig: Rig) -> None:
    """Devices hold the signer's key from their last onboarding: renewing its certificate
    must not change it, or every command would be refused as altered."""
    ca = rig.app.ca
    first = CommandSigner.load_or_create(ca)
    (ca.dir / "command.pem").write_bytes(b"")  # lost, or near its end
    second = CommandSigner.load_or_create(ca)
    assert second.cert_der != first.cert_der
    assert second.cert.public_key() == first.cert.public_key()


def test_a_damaged_signer_key_is_an_error_and_a_removed_one_is_made_again(rig: Rig) -> None:
    ca = rig.app.ca
    first = CommandSigner.load_or_create(ca)
    key = ca.dir / "command.key"
    key.write_bytes(b"not a key")
    # Devices learned the signer's key: a silent new one would have them refuse every command.
    with pytest.raises(CaError, match=r"command\.key is not an unencrypted PEM P-256 private key"):
        CommandSigner.load_or_create(ca)
    assert key.read_bytes() == b"not a key" and (ca.dir / "command.pem").exists()
    key.unlink()  # what the message offers: a new key, which devices learn again
    second = CommandSigner.load_or_create(ca)
    assert second.cert_der != first.cert_der
    second.cert.verify_directly_issued_by(ca.root_cert)


def test_the_proof_answer_carries_the_signer_and_the_renewal_share(rig: Rig) -> None:
    answer = rig.onboard()
    signer = base64.b64decode(answer["command_signer_b64"])
    assert signer == CommandSigner.load_or_create(rig.app.ca).cert_der
    assert answer["policy"]["renew_at_pct"] == 67


def test_a_command_is_signed_bound_to_the_device_and_numbered(rig: Rig) -> None:
    d = rig.device
    first = rig.app.send_command(d.device_id, "ping", actor=ALICE)
    second = rig.app.send_command(d.device_id, "renew", actor=ALICE)
    assert (first.seq, second.seq) == (1, 2)
    assert first.state == second.state == "queued"
    (topic, payload), _ = rig.link.sent
    assert topic == f"qlink/acme/{d.device_id}/cmd"
    signer = CommandSigner.load_or_create(rig.app.ca).cert_der
    doc = verify(signer, payload)
    assert doc == {
        "v": 1,
        "device_id": d.device_id,
        "seq": 1,
        "exp": int(first.expires_at),
        "kind": "ping",
        "args": {},
    }
    # Exact bytes: compact JSON, members in the documented order.
    assert payload[64:].startswith(b'{"v":1,"device_id":"')
    actions = [e.action for e in rig.app.audit(target=f"device:{d.device_id}")]
    assert actions.count("device.command") == 2


def test_an_altered_command_does_not_verify(rig: Rig) -> None:
    rig.app.send_command(rig.device.device_id, "ping", actor=ALICE)
    _topic, payload = rig.link.sent[0]
    altered = payload.replace(b'"ping"', b'"renew"')
    signer = CommandSigner.load_or_create(rig.app.ca).cert_der
    with pytest.raises(InvalidSignature):
        verify(signer, altered)


@pytest.mark.parametrize(
    ("kind", "args", "ttl", "error", "match"),
    [
        ("reboot", {}, 3600, Invalid, "unknown command kind 'reboot'"),
        ("ping", {}, 5, Invalid, "time to live"),
        ("ping", {}, 31 * 86400, Invalid, "time to live"),
        ("ping", {"x": "y" * 400}, 3600, Invalid, r"too long \(\d+ bytes signed, at most 320\)"),
    ],
)
def test_a_bad_command_is_refused_and_nothing_is_stored(
    rig: Rig, kind: str, args: dict[str, Any], ttl: float, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        rig.app.send_command(rig.device.device_id, kind, args, ttl_s=ttl, actor=ALICE)
    assert rig.app.commands(rig.device.device_id) == []
    assert rig.link.sent == []


def test_a_command_for_a_device_that_cannot_take_it_is_refused(rig: Rig) -> None:
    app = rig.app
    fresh = SimDevice("https://localhost", b"")
    app.import_devices("b", [fresh.csv_line()])
    with pytest.raises(Conflict, match="has not onboarded yet"):
        app.send_command(fresh.device_id, "ping", actor=ALICE)
    with pytest.raises(NotFound, match="does not exist"):
        app.send_command(rig.device.device_id, "ping", tenant="globex", actor=ALICE)
    app.disable(rig.device.device_id, actor=ALICE)
    with pytest.raises(Conflict, match="is disabled"):
        app.send_command(rig.device.device_id, "ping", actor=ALICE)
    app.revoke(rig.device.device_id, actor=ALICE)
    with pytest.raises(Conflict, match="is revoked"):
        app.send_command(rig.device.device_id, "ping", actor=ALICE)
    assert app.commands(rig.device.device_id) == [] and rig.link.sent == []


def test_a_command_the_broker_could_not_take_stays_queued(rig: Rig) -> None:
    rig.link.fail = True
    cmd = rig.app.send_command(rig.device.device_id, "ping", actor=ALICE)
    [stored] = rig.app.commands(rig.device.device_id)
    assert (stored.seq, stored.state) == (cmd.seq, "queued")


def intake(rig: Rig, on_drift: Any = None) -> EventIntake:
    """The event intake's logic without its broker connection."""
    ev = EventIntake.__new__(EventIntake)
    ev.store = rig.app.store
    ev.signer = CommandSigner.load_or_create(rig.app.ca)
    ev.received = ev.resent = 0
    ev.drift_pct = 50
    ev._on_online = None
    ev._on_drift = on_drift
    ev.link = rig.link  # type: ignore[assignment]
    return ev


class Msg:
    def __init__(self, topic: str, payload: bytes) -> None:
        self.topic, self.payload = topic, payload


def event(rig: Rig, doc: dict[str, Any], tenant: str = "acme", on_drift: Any = None) -> None:
    msg = Msg(f"qlink/{tenant}/{rig.device.device_id}/event", json.dumps(doc).encode())
    intake(rig, on_drift)._on_message(None, None, msg)  # type: ignore[arg-type]


def state(rig: Rig, seq: int) -> tuple[str, str | None]:
    cmd = rig.app.store.commands.get(rig.device.device_id, seq)
    assert cmd is not None
    return cmd.state, cmd.detail


def test_acknowledgements_move_a_command_forward_only(rig: Rig) -> None:
    rig.app.send_command(rig.device.device_id, "ping", actor=ALICE)
    event(rig, {"event": "command", "seq": 1, "status": "accepted"})
    assert state(rig, 1) == ("delivered", None)
    event(rig, {"event": "command", "seq": 1, "status": "done"})
    assert state(rig, 1) == ("done", None)
    event(rig, {"event": "command", "seq": 1, "status": "failed", "reason": "late"})
    event(rig, {"event": "command", "seq": 1, "status": "accepted"})
    assert state(rig, 1) == ("done", None)  # an ended command stays as it ended
    actions = [e.action for e in rig.app.audit(target=f"device:{rig.device.device_id}")]
    assert "device.command_done" in actions


def test_a_failure_and_a_rejection_are_kept_with_their_reason(rig: Rig) -> None:
    rig.app.send_command(rig.device.device_id, "ping", actor=ALICE)
    rig.app.send_command(rig.device.device_id, "ping", actor=ALICE)
    event(rig, {"event": "command", "seq": 1, "status": "failed", "reason": "unknown_kind"})
    event(rig, {"event": "command_rejected", "seq": 2, "reason": "expired"})
    assert state(rig, 1) == ("failed", "unknown_kind")
    assert state(rig, 2) == ("failed", "rejected: expired")


def test_an_event_on_another_tenants_prefix_changes_nothing(rig: Rig) -> None:
    rig.app.send_command(rig.device.device_id, "ping", actor=ALICE)
    event(rig, {"event": "command", "seq": 1, "status": "done"}, tenant="globex")
    assert state(rig, 1) == ("queued", None)


def test_online_sends_again_what_the_device_has_not_accepted(rig: Rig) -> None:
    d = rig.device
    for _ in range(3):
        rig.app.send_command(d.device_id, "ping", actor=ALICE)
    rig.app.store.db.write_one(
        "UPDATE commands SET expires_at = 1 WHERE device_id = :d AND seq = 3", {"d": d.device_id}
    )
    rig.link.sent.clear()
    event(rig, {"event": "online", "fw": "1", "cmd_seq": 1, "puf": {"margin": 9}})
    seqs = [json.loads(p[64:])["seq"] for _t, p in rig.link.sent]
    assert seqs == [2]  # 1 accepted already, 3 expired
    assert state(rig, 3) == ("expired", None)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"[]",
        b'{"event": "command", "seq": -1, "status": "done"}',
        b'{"event": "command", "seq": 1, "status": "finished"}',
        b'{"event": "command", "seq": true, "status": "done"}',
        b'{"event": "online"}',
        b'{"event": "command_rejected", "seq": "1", "reason": "x"}',
        b'{"event": "command", "seq": 1, "status": "done", "event": "online"}',
        b"{" * 100,
        b'{"event": "online", "cmd_seq": 1, "pad": "' + b"x" * 2000 + b'"}',
    ],
)
def test_a_malformed_event_is_ignored(payload: bytes) -> None:
    assert parse_event(payload) is None


def test_online_keeps_only_numeric_puf_health() -> None:
    ev = parse_event(b'{"event": "online", "cmd_seq": 4, "puf": {"margin": 7, "x": "y"}}')
    assert ev == Online(4, None, {"margin": 7})


def test_a_renew_command_makes_the_next_proof_issue_a_new_certificate(rig: Rig) -> None:
    d = rig.device
    before = rig.app.device(d.device_id)
    assert before is not None and before.serial is not None
    # Before the renewal point, asking again gives the same certificate.
    again = rig.onboard()
    assert again["certificate_b64"] == base64.b64encode(before.cert_der or b"").decode()
    rig.app.renew(d.device_id, actor=ALICE)
    renewed = rig.onboard()
    assert renewed["certificate_b64"] != again["certificate_b64"]
    after = rig.app.device(d.device_id)
    assert after is not None and after.serial != before.serial
    assert int(before.serial, 16) in [r.serial for r in rig.app.revoked_certs()]


def test_online_records_puf_health_and_flags_a_drifting_device(rig: Rig) -> None:
    d = rig.device
    event(rig, {"event": "online", "cmd_seq": 0, "puf": {"margin": 31, "corrected_bits": 40}})
    dev = rig.app.device(d.device_id)
    assert dev is not None and dev.puf_used_pct == 0
    assert rig.app.drifting() == []
    event(rig, {"event": "online", "cmd_seq": 0, "puf": {"margin": 15, "corrected_bits": 300}})
    dev = rig.app.device(d.device_id)
    assert dev is not None and dev.puf_used_pct == 52  # 1 - 15/31 of the budget
    assert [x.device_id for x in rig.app.drifting()] == [d.device_id]
    history = rig.app.puf_health(d.device_id)
    assert [(h.margin, h.corrected_bits) for h in history] == [(15, 300), (31, 40)]


def test_puf_history_is_bounded_per_device(rig: Rig) -> None:
    from host.server.store.puf import HISTORY_KEPT

    for i in range(HISTORY_KEPT + 5):
        rig.app.store.puf.record(rig.device.device_id, float(i), {"margin": 31 - i % 3})
    history = rig.app.puf_health(rig.device.device_id, limit=1000)
    assert len(history) == HISTORY_KEPT
    assert history[0].at == HISTORY_KEPT + 4 and history[-1].at == 5  # the newest kept


def test_the_reenrolment_policy_commands_a_drifting_device_once(rig: Rig) -> None:
    d = rig.device
    asked: list[str] = []

    def policy(device_id: str) -> None:
        asked.append(device_id)
        rig.app.reenrol(device_id, actor=Actor("policy:puf-drift", "server"))

    online = {"event": "online", "cmd_seq": 0}
    event(rig, {**online, "puf": {"margin": 31}}, on_drift=policy)
    assert asked == []  # a healthy die: nothing
    event(rig, {**online, "puf": {"margin": 10}}, on_drift=policy)
    event(rig, {**online, "puf": {"margin": 9}}, on_drift=policy)
    assert asked == [d.device_id]  # once: the reenrol command is open after the first
    [cmd] = [c for c in rig.app.commands(d.device_id) if c.kind == "reenrol"]
    assert cmd.state == "queued"


def test_raw_errors_count_against_the_budget_while_the_margin_is_saturated(rig: Rig) -> None:
    d = rig.device
    online = {"event": "online", "cmd_seq": 0}
    event(rig, {**online, "puf": {"margin": 31, "corrected_bits": 91, "corrected_limit": 512}})
    event(rig, {**online, "puf": {"margin": 31, "corrected_bits": 155, "corrected_limit": 512}})
    dev = rig.app.device(d.device_id)
    assert dev is not None and dev.puf_used_pct == 30  # 155 of 512, margin still full
