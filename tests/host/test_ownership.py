"""Ownership transfer, re-enrolment and decommissioning through the application layer
(host/server/ownership.py, successors.py, store/transfers.py, store/successors.py), with
hil.simdevice.SimDevice as the device: its next identity is a new key it makes, and it signs the
successor message exactly as docs/protocol.md "Successor identities" writes it."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID
from ownerutil import successor_body

from hil.simdevice import ApiResponse, SimDevice
from host.server.application import Application
from host.server.commands import LABEL, CommandError, CommandSigner
from host.server.onboarding import OnboardingRefused
from host.server.policy import MemoryPolicy
from host.server.schemas import plain
from host.server.settings import Settings
from host.server.store import Actor, Conflict, Invalid, NotFound

ALICE = Actor("operator:alice", "198.51.100.4")  # acme, the current owner
BOB = Actor("operator:bob", "203.0.113.20")  # globex, the new owner
DEVICE_ADDRESS = "192.0.2.33"


class DeviceLink:
    """The broker connection as the tests see it: what was published, and optionally a device
    that answers a command of a given kind at once (its event, as the intake records it)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.on_send: Callable[[dict[str, Any]], None] | None = None

    def send(self, topic: str, payload: bytes, *, wait: bool = True) -> None:
        self.sent.append((topic, payload))
        if self.on_send is not None:
            self.on_send(json.loads(payload[64:]))

    def close(self) -> None:
        pass


class Rig:
    def __init__(self, app: Application, policy: MemoryPolicy, link: DeviceLink) -> None:
        self.app, self.policy, self.link = app, policy, link
        self.device = self.new_device()

    def new_device(self) -> SimDevice:
        return SimDevice("https://localhost", self.app.ca.root_der())

    def onboard(self, d: SimDevice) -> dict[str, Any]:
        ob = self.app.onboarding
        h = ob.hello({"device_id": d.device_id, "public_key": d.public_key.hex()})
        return ob.proof(d.proof_body(ApiResponse(200, h)))[1]

    def successor(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return self.app.successors.successor(body, DEVICE_ADDRESS)

    def snapshot(self) -> tuple[Any, ...]:
        """Everything a refused request must leave as it was."""
        db = self.app.store.db
        return (
            db.all("SELECT * FROM devices ORDER BY device_id"),
            db.all("SELECT * FROM transfers ORDER BY id"),
            db.all("SELECT * FROM commands ORDER BY device_id, seq"),
            db.all("SELECT * FROM revoked_certs ORDER BY serial"),
            db.all("SELECT COUNT(*) AS n FROM audit"),
            dict(self.policy.registered),
        )


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    policy = MemoryPolicy()
    app = Application.for_server(Settings(data_dir=tmp_path), broker_port=1, policy=policy)
    link = DeviceLink()
    app.__dict__["command_link"] = link
    for tenant, batch in (("acme", "line"), ("globex", "fleet")):
        app.create_tenant(tenant)
        app.create_batch(batch, tenant)
    r = Rig(app, policy, link)
    app.import_devices("line", [r.device.csv_line()])
    r.onboard(r.device)
    yield r
    app.close()


def signed_body(rig: Rig, payload: bytes) -> dict[str, Any]:
    """What the device does with a command: the signer's signature, then the body."""
    key = CommandSigner.load_or_create(rig.app.ca).cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    sig, body = payload[:64], payload[64:]
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    key.verify(der, LABEL + body, ec.ECDSA(hashes.SHA256()))
    doc: dict[str, Any] = json.loads(body)
    return doc


def claimed(rig: Rig) -> tuple[str, int]:
    """The current owner's code claimed by the new owner: (claim handle, transfer seq)."""
    code = rig.app.transfer_code(rig.device.device_id, actor=ALICE)
    claim = rig.app.claim(code.code, "globex", "fleet", actor=BOB)
    [cmd] = [c for c in rig.app.commands(rig.device.device_id) if c.kind == "transfer"]
    return claim.claim, cmd.seq


def refused(rig: Rig, body: dict[str, Any]) -> OnboardingRefused:
    with pytest.raises(OnboardingRefused) as e:
        rig.successor(body)
    return e.value


# -- a whole transfer --------------------------------------------------------------------------
def test_a_transfer_moves_the_device_to_an_unlinked_identity_in_the_new_owners_batch(
    rig: Rig,
) -> None:
    app, d = rig.app, rig.device
    old = app.device(d.device_id)
    assert old is not None and old.serial is not None
    code = app.transfer_code(d.device_id, actor=ALICE)
    assert code.code.startswith("qlt_") and len(code.code) == 36
    claim = app.claim(code.code, "globex", "fleet", actor=BOB)
    # The claim says nothing of the device it moves.
    assert claim.claim.startswith("clm_") and claim.state == "pending" and claim.device_id is None
    assert plain(claim) == claim.model_dump(mode="json") and plain(code) == code.model_dump()
    assert d.device_id not in json.dumps(claim.model_dump())

    # The device is sent `transfer` with its next owner epoch, signed and bound to it.
    [cmd] = app.commands(d.device_id)
    assert (cmd.kind, cmd.args, cmd.state) == ("transfer", {"epoch": 1}, "queued")
    [(topic, payload)] = rig.link.sent
    assert topic == f"qlink/acme/{d.device_id}/cmd"
    doc = signed_body(rig, payload)
    assert (doc["device_id"], doc["kind"], doc["args"]) == (d.device_id, "transfer", {"epoch": 1})

    nxt = rig.new_device()
    assert rig.successor(successor_body(d, nxt.key, "transfer", cmd.seq)) == (
        d.device_id,
        {"device_id": nxt.device_id},
    )
    new = app.device(nxt.device_id)
    assert new is not None
    assert (new.tenant, new.batch, new.state, new.epoch) == ("globex", "fleet", "registered", 1)
    assert new.predecessor is None and new.successor is None  # no link between owners
    gone = app.device(d.device_id)
    assert gone is not None and gone.state == "revoked" and gone.successor is None
    assert app.commands(d.device_id)[0].state == "done"
    # Cut off as a revocation is: the broker's entry gone, the serial on the published CRL.
    assert d.device_id not in rig.policy.registered
    crl = x509.load_der_x509_crl(app.ca.crl_path.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(old.serial, 16)) is not None
    assert app.claim_status(claim.claim, "globex").model_dump() == {
        **claim.model_dump(),
        "state": "done",
        "device_id": nxt.device_id,
    }

    # The next identity onboards as a device of the new owner.
    answer = rig.onboard(nxt)
    assert answer["topics"]["cmd"] == f"qlink/globex/{nxt.device_id}/cmd"
    cert = x509.load_der_x509_certificate(base64.b64decode(answer["certificate_b64"]))
    subject = {a.oid: a.value for a in cert.subject}
    assert subject == {
        NameOID.COMMON_NAME: nxt.device_id,
        NameOID.ORGANIZATIONAL_UNIT_NAME: "globex",
    }


def test_each_owners_audit_log_names_only_its_own_side_of_a_transfer(rig: Rig) -> None:
    d, nxt = rig.device, rig.new_device()
    _handle, seq = claimed(rig)
    rig.successor(successor_body(d, nxt.key, "transfer", seq))
    old_log = json.dumps([e.model_dump() for e in rig.app.audit("acme")])
    new_log = json.dumps([e.model_dump() for e in rig.app.audit("globex")])
    assert nxt.device_id not in old_log and nxt.public_key.hex() not in old_log
    assert d.device_id not in new_log and d.public_key.hex() not in new_log
    assert "globex" not in old_log and "operator:bob" not in old_log
    actions = {(e.action, e.target) for e in rig.app.audit("acme")}
    assert ("device.transfer_out", f"device:{d.device_id}") in actions
    assert ("device.revoke", f"device:{d.device_id}") in actions
    assert ("device.transfer_in", f"device:{nxt.device_id}") in {
        (e.action, e.target) for e in rig.app.audit("globex")
    }


def test_a_retried_successor_request_gets_the_same_answer_and_changes_nothing(rig: Rig) -> None:
    d, nxt = rig.device, rig.new_device()
    _handle, seq = claimed(rig)
    body = successor_body(d, nxt.key, "transfer", seq)
    first = rig.successor(body)
    before = rig.snapshot()
    assert rig.successor(body) == first
    # A fresh signature over the same move is the same request.
    assert rig.successor(successor_body(d, nxt.key, "transfer", seq)) == first
    assert rig.snapshot() == before


def test_a_retry_after_a_stop_between_the_store_and_the_broker_cuts_the_old_identity_off(
    rig: Rig,
) -> None:
    from host.server.store.successors import Move

    d, nxt = rig.device, rig.new_device()
    _handle, seq = claimed(rig)
    old = rig.app.device(d.device_id)
    assert old is not None and old.serial is not None
    # The transaction committed, then the process stopped: no deny, no CRL.
    rig.app.store.successors.record(Move(old, nxt.device_id, nxt.public_key, "transfer", seq, "-"))
    assert d.device_id in rig.policy.registered
    assert rig.successor(successor_body(d, nxt.key, "transfer", seq))[1] == {
        "device_id": nxt.device_id
    }
    assert d.device_id not in rig.policy.registered
    crl = x509.load_der_x509_crl(rig.app.ca.crl_path.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(old.serial, 16)) is not None


def test_the_transfer_code_is_stored_only_as_its_sha256(rig: Rig) -> None:
    code = rig.app.transfer_code(rig.device.device_id, actor=ALICE).code
    path = rig.app.store.path
    assert path is not None
    with sqlite3.connect(path) as db:
        dump = "\n".join(db.iterdump())
    assert code not in dump and hashlib.sha256(code.encode()).hexdigest() in dump
    assert code not in json.dumps([e.model_dump() for e in rig.app.audit()])


# -- codes that bind nothing -------------------------------------------------------------------
def _reused(rig: Rig) -> str:
    code = rig.app.transfer_code(rig.device.device_id, actor=ALICE).code
    rig.app.claim(code, "globex", "fleet", actor=BOB)
    rig.app.create_tenant("initech")
    rig.app.create_batch("spares", "initech")
    rig.app.create_batch("spares", "globex")
    return code


def _expired(rig: Rig) -> str:
    code = rig.app.transfer_code(rig.device.device_id, actor=ALICE).code
    rig.app.store.db.write_one("UPDATE transfers SET expires_at = 1")
    return code


def _replaced(rig: Rig) -> str:
    code = rig.app.transfer_code(rig.device.device_id, actor=ALICE).code
    rig.app.transfer_code(rig.device.device_id, actor=ALICE)
    return code


def _forged(rig: Rig) -> str:
    code = rig.app.transfer_code(rig.device.device_id, actor=ALICE).code
    return code[:-1] + ("A" if code[-1] != "A" else "B")  # right prefix and length


def _unknown(rig: Rig) -> str:
    return "qlt_" + "x" * 32


@pytest.mark.parametrize(
    ("make", "tenant", "batch", "error", "match"),
    [
        (_reused, "initech", "spares", Conflict, "was used already"),
        (_reused, "globex", "spares", Conflict, "was used already"),
        (_expired, "globex", "fleet", Conflict, "expired"),
        (_replaced, "globex", "fleet", Conflict, "replaced by a newer one"),
        (_forged, "globex", "fleet", NotFound, "no such transfer code"),
        (_unknown, "globex", "fleet", NotFound, "no such transfer code"),
    ],
    ids=["reused-other-tenant", "reused-other-batch", "expired", "replaced", "forged", "unknown"],
)
def test_a_code_that_is_reused_expired_replaced_forged_or_unknown_binds_nothing(
    rig: Rig, make: Callable[[Rig], str], tenant: str, batch: str, error: type, match: str
) -> None:
    code = make(rig)
    before = rig.snapshot()
    with pytest.raises(error, match=match) as e:
        rig.app.claim(code, tenant, batch, actor=BOB)
    assert rig.device.device_id not in str(e.value)  # nothing of the device to a stranger
    assert rig.snapshot() == before


@pytest.mark.parametrize("code", ["", "qlt_short", "qlk_" + "x" * 32, "qlt_" + "!" * 32])
def test_a_code_of_the_wrong_shape_is_refused_before_any_lookup(rig: Rig, code: str) -> None:
    before = rig.snapshot()
    with pytest.raises(Invalid, match="a transfer code is qlt_ followed by 32"):
        rig.app.claim(code, "globex", "fleet", actor=BOB)
    assert rig.snapshot() == before


def test_claiming_the_same_code_into_the_same_batch_again_is_the_same_claim(rig: Rig) -> None:
    code = rig.app.transfer_code(rig.device.device_id, actor=ALICE).code
    first = rig.app.claim(code, "globex", "fleet", actor=BOB)
    before = rig.snapshot()
    assert rig.app.claim(code, "globex", "fleet", actor=BOB) == first
    assert rig.snapshot() == before
    assert len(rig.link.sent) == 1  # one transfer command


def test_a_claim_into_a_batch_the_claimer_does_not_have_binds_nothing(rig: Rig) -> None:
    code = rig.app.transfer_code(rig.device.device_id, actor=ALICE).code
    before = rig.snapshot()
    with pytest.raises(NotFound, match="batch 'line' does not exist"):
        rig.app.claim(code, "globex", "line", actor=BOB)  # acme's batch name
    assert rig.snapshot() == before
    assert rig.app.claim(code, "globex", "fleet", actor=BOB).state == "pending"  # still open


def _registered(rig: Rig) -> str:
    d = rig.new_device()
    rig.app.import_devices("line", [d.csv_line()])
    return d.device_id


def _disabled(rig: Rig) -> str:
    rig.app.disable(rig.device.device_id, actor=ALICE)
    return rig.device.device_id


def _revoked(rig: Rig) -> str:
    rig.app.revoke(rig.device.device_id, actor=ALICE)
    return rig.device.device_id


def _seeds_spent(rig: Rig) -> str:
    rig.app.store.db.write_one("UPDATE devices SET epoch = 7")
    return rig.device.device_id


def _reenrolling(rig: Rig) -> str:
    rig.app.reenrol(rig.device.device_id, actor=ALICE)
    return rig.device.device_id


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (_registered, "has not onboarded yet; it cannot be transferred"),
        (_disabled, "is disabled; it cannot be transferred"),
        (_revoked, "is revoked; it cannot be transferred"),
        (_seeds_spent, "all of its 8 owner identities; re-enrol it first"),
        (_reenrolling, "is re-enrolling"),
    ],
)
def test_a_device_that_cannot_move_gets_no_code(
    rig: Rig, make: Callable[[Rig], str], match: str
) -> None:
    device_id = make(rig)
    before = rig.snapshot()
    with pytest.raises(Conflict, match=match):
        rig.app.transfer_code(device_id, actor=ALICE)
    assert rig.snapshot() == before


def test_a_code_is_only_for_the_owners_own_device(rig: Rig) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        rig.app.transfer_code(rig.device.device_id, tenant="globex", actor=BOB)


@pytest.mark.parametrize("ttl", [599, 30 * 86400 + 1])
def test_a_code_lives_10_minutes_to_30_days(rig: Rig, ttl: float) -> None:
    with pytest.raises(Invalid, match="10 minutes to 30 days"):
        rig.app.transfer_code(rig.device.device_id, ttl_s=ttl, actor=ALICE)


def test_a_device_revoked_after_its_code_was_issued_cannot_be_claimed(rig: Rig) -> None:
    code = rig.app.transfer_code(rig.device.device_id, actor=ALICE).code
    rig.app.revoke(rig.device.device_id, actor=ALICE)
    before = rig.snapshot()
    with pytest.raises(Conflict, match="cannot be transferred now") as e:
        rig.app.claim(code, "globex", "fleet", actor=BOB)
    assert rig.device.device_id not in str(e.value)
    assert rig.snapshot() == before


def test_no_new_code_while_a_claimed_transfer_is_under_way(rig: Rig) -> None:
    claimed(rig)
    with pytest.raises(Conflict, match="under way"):
        rig.app.transfer_code(rig.device.device_id, actor=ALICE)
    # Once its command has ended without the move, the claim is void and a new code is given.
    rig.app.store.db.write_one("UPDATE commands SET expires_at = 1")
    handle = rig.app.store.db.all("SELECT claim FROM transfers")[0]["claim"]
    assert rig.app.claim_status(handle, "globex").state == "failed"
    assert rig.app.transfer_code(rig.device.device_id, actor=ALICE).code.startswith("qlt_")


def test_a_batch_gets_one_code_per_device_that_can_move(rig: Rig) -> None:
    second = rig.new_device()
    waiting = rig.new_device()
    rig.app.import_devices("line", [second.csv_line(), waiting.csv_line()])
    rig.onboard(second)
    codes = rig.app.transfer_codes("line", actor=ALICE)
    assert sorted(c.device_id for c in codes) == sorted([rig.device.device_id, second.device_id])
    assert len({c.code for c in codes}) == 2
    with pytest.raises(NotFound):
        rig.app.transfer_codes("line", tenant="globex", actor=BOB)


# -- successor requests that are refused -------------------------------------------------------
def _bad_signature(rig: Rig, seq: int, nxt: SimDevice) -> dict[str, Any]:
    stranger = ec.generate_private_key(ec.SECP256R1())
    return successor_body(rig.device, nxt.key, "transfer", seq, signer=stranger)


def _wrong_seq(rig: Rig, seq: int, nxt: SimDevice) -> dict[str, Any]:
    return successor_body(rig.device, nxt.key, "transfer", seq + 1)


def _wrong_reason(rig: Rig, seq: int, nxt: SimDevice) -> dict[str, Any]:
    return successor_body(rig.device, nxt.key, "reenrol", seq)


def _expired_command(rig: Rig, seq: int, nxt: SimDevice) -> dict[str, Any]:
    rig.app.store.db.write_one("UPDATE commands SET expires_at = 1")
    return successor_body(rig.device, nxt.key, "transfer", seq)


def _next_taken(rig: Rig, seq: int, nxt: SimDevice) -> dict[str, Any]:
    rig.app.import_devices("fleet", [nxt.csv_line()])
    return successor_body(rig.device, nxt.key, "transfer", seq)


def _unknown_device(rig: Rig, seq: int, nxt: SimDevice) -> dict[str, Any]:
    return successor_body(rig.new_device(), nxt.key, "transfer", seq)


def _device_disabled(rig: Rig, seq: int, nxt: SimDevice) -> dict[str, Any]:
    rig.app.disable(rig.device.device_id, actor=ALICE)
    return successor_body(rig.device, nxt.key, "transfer", seq)


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        (_bad_signature, 403, "bad_signature"),
        (_wrong_seq, 409, "no_successor_expected"),
        (_wrong_reason, 409, "no_successor_expected"),
        (_expired_command, 409, "no_successor_expected"),
        (_next_taken, 409, "successor_taken"),
        (_unknown_device, 403, "not_registered"),
        (_device_disabled, 403, "not_registered"),
    ],
)
def test_a_successor_request_that_breaks_a_rule_is_refused_and_changes_nothing(
    rig: Rig, make: Callable[[Rig, int, SimDevice], dict[str, Any]], status: int, code: str
) -> None:
    _handle, seq = claimed(rig)
    body = make(rig, seq, rig.new_device())
    before = rig.snapshot()
    e = refused(rig, body)
    assert (e.status, e.code) == (status, code)
    assert rig.snapshot() == before


def test_a_successor_request_without_any_open_command_is_refused(rig: Rig) -> None:
    before = rig.snapshot()
    e = refused(rig, successor_body(rig.device, rig.new_device().key, "transfer", 1))
    assert (e.status, e.code) == (409, "no_successor_expected")
    assert rig.snapshot() == before


def test_a_transfer_command_without_a_claim_moves_nothing(rig: Rig) -> None:
    """An owner's own `transfer` command (qlink device command ID transfer) has no new owner."""
    cmd = rig.app.send_command(rig.device.device_id, "transfer", {"epoch": 1}, actor=ALICE)
    before = rig.snapshot()
    e = refused(rig, successor_body(rig.device, rig.new_device().key, "transfer", cmd.seq))
    assert (e.status, e.code) == (409, "no_successor_expected")
    assert rig.snapshot() == before


def _body_with(**changes: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda body: {k: v for k, v in {**body, **changes}.items() if v is not None}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (_body_with(extra=1), "unknown field"),
        (_body_with(device_id="zz"), "device_id must be"),
        (_body_with(public_key="04" + "00" * 64), "public_key: public key is not a point"),
        (_body_with(public_key="02" + "11" * 64), "public_key: public key must be 65 bytes"),
        (_body_with(reason="sell"), "reason must be one of transfer, reenrol"),
        (_body_with(seq=True), "seq must be"),
        (_body_with(seq=0), "seq must be"),
        (_body_with(seq=2**31), "seq must be"),
        (_body_with(seq="1"), "seq must be"),
        (_body_with(signature="ab"), "signature must be a string of 128 hex"),
        (_body_with(signature=None), "signature must be a string of 128 hex"),
    ],
)
def test_a_malformed_successor_request_is_400_and_changes_nothing(
    rig: Rig, change: Callable[[dict[str, Any]], dict[str, Any]], match: str
) -> None:
    _handle, seq = claimed(rig)
    body = change(successor_body(rig.device, rig.new_device().key, "transfer", seq))
    before = rig.snapshot()
    e = refused(rig, body)
    assert (e.status, e.code) == (400, "bad_request")
    assert match in e.detail
    assert rig.snapshot() == before


def test_the_next_key_must_differ_from_the_current_one(rig: Rig) -> None:
    _handle, seq = claimed(rig)
    e = refused(rig, successor_body(rig.device, rig.device.key, "transfer", seq))
    assert (e.status, e.code) == (400, "bad_request")
    assert "next identity's key" in e.detail


def test_successor_requests_are_rate_limited_per_source(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, hello_per_source_per_min=2)
    app = Application.for_server(settings, broker_port=1, policy=MemoryPolicy())
    try:
        d = SimDevice("https://localhost", b"")
        body = successor_body(d, ec.generate_private_key(ec.SECP256R1()), "transfer", 1)
        for _ in range(2):
            with pytest.raises(OnboardingRefused, match="not_registered"):
                app.successors.successor(body, DEVICE_ADDRESS)
        with pytest.raises(OnboardingRefused) as e:
            app.successors.successor(body, DEVICE_ADDRESS)
        assert (e.value.status, e.value.code) == (429, "rate_limited") and e.value.retry_after > 0
        # Another address is not held back by this one.
        with pytest.raises(OnboardingRefused, match="not_registered"):
            app.successors.successor(body, "192.0.2.200")
    finally:
        app.close()


# -- re-enrolment ------------------------------------------------------------------------------
def test_reenrolment_links_the_new_identity_to_the_same_batch_with_its_history(rig: Rig) -> None:
    d, nxt = rig.device, rig.new_device()
    cmd = rig.app.reenrol(d.device_id, actor=ALICE)
    assert (cmd.kind, cmd.args) == ("reenrol", {})
    assert cmd.expires_at - cmd.created_at >= 29 * 86400  # done at the next cold boot
    assert rig.successor(successor_body(d, nxt.key, "reenrol", cmd.seq)) == (
        d.device_id,
        {"device_id": nxt.device_id},
    )
    new, old = rig.app.device(nxt.device_id), rig.app.device(d.device_id)
    assert new is not None and old is not None
    assert (new.tenant, new.batch, new.state, new.epoch) == ("acme", "line", "registered", 0)
    assert (new.predecessor, old.successor, old.state) == (d.device_id, nxt.device_id, "revoked")
    assert rig.app.commands(d.device_id)[0].state == "done"
    events = {(e.action, e.target): e.detail for e in rig.app.audit("acme")}
    assert events[("device.reenrol_out", f"device:{d.device_id}")]["successor"] == nxt.device_id
    assert events[("device.reenrol_in", f"device:{nxt.device_id}")] == {"predecessor": d.device_id}
    assert rig.onboard(nxt)["device_id"] == nxt.device_id
    # The same request again: the same answer.
    before = rig.snapshot()
    assert rig.successor(successor_body(d, nxt.key, "reenrol", cmd.seq))[1] == {
        "device_id": nxt.device_id
    }
    assert rig.snapshot() == before


def test_no_reenrolment_while_a_transfer_is_under_way(rig: Rig) -> None:
    claimed(rig)
    before = rig.snapshot()
    with pytest.raises(Conflict, match="being transferred"):
        rig.app.reenrol(rig.device.device_id, actor=ALICE)
    assert rig.snapshot() == before


# -- decommissioning ---------------------------------------------------------------------------
def test_decommissioning_an_offline_device_revokes_it_and_says_it_was_not_confirmed(
    rig: Rig,
) -> None:
    d = rig.device
    serial = rig.app.device(d.device_id).serial  # type: ignore[union-attr]
    out = rig.app.decommission(d.device_id, wait_s=0, actor=ALICE)
    assert out.confirmed is False
    assert out.device.state == "revoked"
    assert out.command is not None and (out.command.kind, out.command.state) == (
        "decommission",
        "queued",
    )
    assert int(serial, 16) in [r.serial for r in rig.app.revoked_certs()]
    # What the CLI prints (`plain`) is what the API answers (`model_dump`).
    assert plain(out) == out.model_dump(mode="json")
    assert "public_key" not in plain(out)["device"]


def test_decommissioning_an_online_device_waits_for_its_erase(rig: Rig) -> None:
    d = rig.device

    def device_answers(body: dict[str, Any]) -> None:
        # What the event intake records when the device reports the erase.
        rig.app.store.commands.report(d.device_id, body["seq"], "delivered")
        rig.app.store.commands.report(d.device_id, body["seq"], "done")

    rig.link.on_send = device_answers
    out = rig.app.decommission(d.device_id, wait_s=30, actor=ALICE)
    assert out.confirmed is True and out.device.state == "revoked"
    assert out.command is not None and out.command.state == "done"


def test_decommissioning_a_device_that_never_onboarded_revokes_it_unconfirmed(rig: Rig) -> None:
    d = rig.new_device()
    rig.app.import_devices("line", [d.csv_line()])
    out = rig.app.decommission(d.device_id, wait_s=30, actor=ALICE)
    assert (out.confirmed, out.command, out.device.state) == (False, None, "revoked")
    assert rig.link.sent == []


def test_decommissioning_a_revoked_device_is_refused(rig: Rig) -> None:
    rig.app.revoke(rig.device.device_id, actor=ALICE)
    before = rig.snapshot()
    with pytest.raises(Conflict, match="is revoked already"):
        rig.app.decommission(rig.device.device_id, wait_s=0, actor=ALICE)
    assert rig.snapshot() == before


def test_decommissioning_when_the_broker_is_down_still_revokes(rig: Rig) -> None:
    def broker_down(_body: dict[str, Any]) -> None:
        raise CommandError("the broker is down")

    rig.link.on_send = broker_down
    out = rig.app.decommission(rig.device.device_id, wait_s=0, actor=ALICE)
    assert (out.confirmed, out.device.state) == (False, "revoked")


# -- the store's statements on both databases --------------------------------------------------
def test_the_store_records_transfers_and_moves_on_both_databases(database: str | Path) -> None:
    from host.server.store import Store
    from host.server.store.successors import Move, NoSuccessorExpected, SuccessorTaken
    from host.server.store.transfers import new_code

    store = Store(database)
    try:
        for tenant, batch in (("acme", "line"), ("globex", "fleet")):
            store.tenants.create(tenant)
            store.batches.create(batch, tenant)
        cur, nxt, again = (SimDevice("", b"") for _ in range(3))
        store.batches.import_devices("line", [cur.csv_line(), again.csv_line()])
        store.db.write_one(
            "UPDATE devices SET state = 'onboarded', serial = 'abc', not_after = 1e10"
        )
        dev = store.devices.get(cur.device_id)
        assert dev is not None
        code = new_code()
        store.transfers.issue(dev, code, 3600, ALICE)
        claim = store.transfers.claim(code, "globex", "fleet", BOB)
        assert store.transfers.claim(code, "globex", "fleet", BOB) == claim
        with pytest.raises(Conflict):
            store.transfers.claim(code, "acme", "line", ALICE)
        cmd = store.commands.create(dev, "transfer", {"epoch": claim.epoch}, 3600, ALICE)
        store.transfers.set_seq(claim.handle, cmd.seq)
        taken = Move(dev, again.device_id, again.public_key, "transfer", cmd.seq, "-")
        with pytest.raises(SuccessorTaken):
            store.successors.record(taken)
        with pytest.raises(NoSuccessorExpected):
            store.successors.record(
                Move(dev, nxt.device_id, nxt.public_key, "transfer", cmd.seq + 1, "-")
            )
        store.successors.record(Move(dev, nxt.device_id, nxt.public_key, "transfer", cmd.seq, "-"))
        assert store.successors.answered(cur.device_id, "transfer", cmd.seq, nxt.device_id)
        moved = store.devices.get(nxt.device_id, "globex")
        assert moved is not None and (moved.batch, moved.epoch) == ("fleet", 1)
        assert store.transfers.status(claim.handle, "globex").device_id == nxt.device_id
        assert 0xABC in [r.serial for r in store.devices.revoked_certs()]

        # Re-enrolment of the other device: same batch, linked both ways.
        other = store.devices.get(again.device_id)
        assert other is not None
        cmd = store.commands.create(other, "reenrol", {}, 3600, ALICE)
        fresh = SimDevice("", b"")
        store.successors.record(
            Move(other, fresh.device_id, fresh.public_key, "reenrol", cmd.seq, "-")
        )
        assert store.successors.answered(again.device_id, "reenrol", cmd.seq, fresh.device_id)
        linked = store.devices.get(fresh.device_id)
        assert linked is not None and (linked.batch, linked.predecessor) == (
            "line",
            again.device_id,
        )
    finally:
        store.close()
