"""Attacks on onboarding, from a client that follows docs/protocol.md and then cheats: replays,
a proof for another server, impostor keys, CSR tricks, unregistered devices. Each refusal has
the documented code and leaves the registry as it was."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from attacksuite import Attack
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hil.fleet import Fleet
from hil.simdevice import ApiResponse, SimDevice, make_csr

Cheat = Callable[[Fleet, SimDevice], ApiResponse]


def _impostor_hello(fleet: Fleet, d: SimDevice) -> ApiResponse:
    return d.hello(public_key=fleet.stranger().public_key)  # ID of the device, another key


def _stranger_claims_id(fleet: Fleet, d: SimDevice) -> ApiResponse:
    s = fleet.stranger()
    return s.hello(device_id=d.device_id)  # its own key under the device's ID


def _proof(**tamper: object) -> Cheat:
    def cheat(fleet: Fleet, d: SimDevice) -> ApiResponse:
        values = {k: (v(fleet, d) if callable(v) else v) for k, v in tamper.items()}
        return d.proof(d.proof_body(d.hello(), **values))  # type: ignore[arg-type]

    return cheat


def _extra_subject_csr(_fleet: Fleet, d: SimDevice) -> bytes:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, d.device_id),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "other-tenant"),
        ]
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(d.key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.DER)


def _broken_csr(_fleet: Fleet, d: SimDevice) -> bytes:
    der = bytearray(make_csr(d.key, d.device_id))
    der[-5] ^= 0x01  # inside the self-signature
    return bytes(der)


def _p384_csr(_fleet: Fleet, d: SimDevice) -> bytes:
    return make_csr(ec.generate_private_key(ec.SECP384R1()), d.device_id)


def _replayed(fleet: Fleet, d: SimDevice) -> ApiResponse:
    h = d.hello()
    assert d.proof(d.proof_body(h)).status == 200
    return d.proof(d.proof_body(h))  # signed again: another proof for a used challenge


def _earlier_challenge(fleet: Fleet, d: SimDevice) -> ApiResponse:
    earlier, later = d.hello(), d.hello()
    assert d.proof(d.proof_body(later)).status == 200
    return d.proof(d.proof_body(earlier))  # given before the one a proof used


def _another_devices_challenge(fleet: Fleet, d: SimDevice) -> ApiResponse:
    h = fleet.take().hello()
    return d.proof(d.proof_body(h))  # signed with its own key, its own CSR


def _extended_challenge(_fleet: Fleet, d: SimDevice) -> ApiResponse:
    h = d.hello()
    body = d.proof_body(h)
    cid = bytes.fromhex(h.body["challenge_id"])  # the expiry (ms) is its first 6 bytes
    later = int.from_bytes(cid[:6], "big") + 86_400_000
    body["challenge_id"] = (later.to_bytes(6, "big") + cid[6:]).hex()
    return d.proof(body)


def _unregistered(fleet: Fleet, _d: SimDevice) -> ApiResponse:
    return fleet.stranger().hello()


CASES: list[tuple[str, str, Cheat, int, str]] = [
    ("unregistered device", "hello refused", _unregistered, 403, "not_registered"),
    ("impostor key for a known ID", "hello refused", _impostor_hello, 400, "id_mismatch"),
    ("stranger claims a known ID", "hello refused", _stranger_claims_id, 400, "id_mismatch"),
    (
        "proof signed for another server",
        "proof refused",
        _proof(sign_host="evil.example"),
        403,
        "bad_signature",
    ),
    (
        "proof signed by another key",
        "proof refused",
        _proof(signature=lambda f, d: f.stranger().sign(b"\x00" * 32)),
        403,
        "bad_signature",
    ),
    (
        "proof signature out of range",
        "proof refused",
        _proof(signature=b"\xff" * 64),
        403,
        "bad_signature",
    ),
    ("replayed challenge", "a second proof refused", _replayed, 403, "challenge_used"),
    (
        "challenge given before the one used",
        "the earlier proof refused",
        _earlier_challenge,
        403,
        "challenge_used",
    ),
    (
        "another device's challenge answered",
        "proof refused",
        _another_devices_challenge,
        403,
        "unknown_challenge",
    ),
    (
        "challenge ID with a later expiry",
        "proof refused",
        _extended_challenge,
        403,
        "unknown_challenge",
    ),
    (
        "CSR with another key",
        "proof refused",
        _proof(csr_key=lambda f, d: f.stranger().key),
        403,
        "csr_key_mismatch",
    ),
    (
        "CSR for another subject",
        "proof refused",
        _proof(csr_subject="0" * 64),
        403,
        "csr_subject_mismatch",
    ),
    (
        "CSR with an extra subject attribute",
        "proof refused",
        _proof(csr_der=_extra_subject_csr),
        403,
        "csr_subject_mismatch",
    ),
    ("CSR not DER", "proof refused", _proof(csr_der=b"\x30\x03\x02\x01\x01"), 400, "bad_csr"),
    ("CSR self-signature broken", "proof refused", _proof(csr_der=_broken_csr), 400, "bad_csr"),
    (
        "CSR key on another curve",
        "proof refused",
        _proof(csr_der=_p384_csr),
        403,
        "csr_key_mismatch",
    ),
]


@pytest.mark.parametrize(
    ("name", "what", "cheat", "status", "code"), CASES, ids=[c[0] for c in CASES]
)
def test_onboarding_cheat_is_refused(
    attack: Attack, fleet: Fleet, name: str, what: str, cheat: Cheat, status: int, code: str
) -> None:
    attack.expect(name, f"{what}: HTTP {status} {code}; the registry unchanged")
    device = fleet.take()
    before = fleet.dump() if code != "challenge_used" else None
    r = cheat(fleet, device)
    after = fleet.dump() if before is not None else None
    attack.observe(f"HTTP {r.status} {r.error}")
    assert (r.status, r.error) == (status, code), r.body
    assert before == after
