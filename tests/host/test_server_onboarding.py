"""The device API in-process (no broker): every rule of docs/protocol.md, both sides of each
boundary, and that a refusal changes nothing in the registry."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio.from_thread
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hil.simdevice import ApiResponse, SimDevice, make_csr
from host.server import onboarding
from host.server.app import create_app
from host.server.application import Application
from host.server.onboarding import proof_message
from host.server.policy import MemoryPolicy, PolicyError
from host.server.settings import Settings


class Api:
    """Sync calls into the ASGI app through httpx's in-process transport."""

    def __init__(
        self,
        portal: anyio.from_thread.BlockingPortal,
        client: httpx.AsyncClient,
        settings: Settings,
        policy: MemoryPolicy,
    ) -> None:
        self.portal = portal
        self.client = client
        self.settings = settings
        self.policy = policy
        self.registry = Application.for_operator(settings)
        root = (settings.ca_dir / "root.der").read_bytes()
        self.root = root

    def device(self, register: bool = True, batch: str = "b1") -> SimDevice:
        d = SimDevice("https://localhost", self.root)
        if register:
            self.registry.import_devices(batch, [d.csv_line()])
        return d

    def post(self, path: str, body: Any) -> ApiResponse:
        if isinstance(body, bytes):
            kw: dict[str, Any] = {"content": body, "headers": {"content-type": "application/json"}}
        else:
            kw = {"json": body}
        r = self.portal.call(lambda: self.client.post(path, **kw))
        return ApiResponse(r.status_code, r.json())

    def post_together(self, requests: list[tuple[str, dict[str, Any]]]) -> list[ApiResponse]:
        """The requests sent at once, their answers in the same order."""

        async def send() -> list[httpx.Response]:
            return await asyncio.gather(*(self.client.post(p, json=b) for p, b in requests))

        return [ApiResponse(r.status_code, r.json()) for r in self.portal.call(send)]

    def get(self, path: str) -> httpx.Response:
        return self.portal.call(self.client.get, path)

    def hello(self, d: SimDevice) -> ApiResponse:
        return self.post(
            "/v1/onboard/hello", {"device_id": d.device_id, "public_key": d.public_key.hex()}
        )

    def proof(self, body: dict[str, Any]) -> ApiResponse:
        return self.post("/v1/onboard/proof", body)

    def dump(self) -> tuple[list[Any], list[Any]]:
        with sqlite3.connect(self.settings.db_path) as db:
            return (
                db.execute("SELECT * FROM devices ORDER BY device_id").fetchall(),
                db.execute("SELECT * FROM batches ORDER BY id").fetchall(),
            )


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("srv"), challenge_ttl_s=60, broker_port=18883
    )
    policy = MemoryPolicy()
    app = create_app(settings, policy=policy)
    transport = httpx.ASGITransport(app=app)
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(app.router.lifespan_context(app)),
    ):
        client = httpx.AsyncClient(transport=transport, base_url="https://localhost")
        a = Api(portal, client, settings, policy)
        a.registry.create_tenant("acme")
        a.registry.create_batch("b1", "acme")
        a.registry.create_batch("off", "acme")
        a.registry.set_batch_active("off", False)
        yield a
        a.registry.close()
        portal.call(client.aclose)


def refused(r: ApiResponse, status: int, code: str) -> None:
    assert (r.status, r.body.get("error")) == (status, code), r.body
    assert set(r.body) == {"error", "detail"}
    assert isinstance(r.body["detail"], str) and len(r.body["detail"]) > 10


def test_happy_path(api: Api) -> None:
    d = api.device()
    h = api.hello(d)
    assert h.status == 200
    assert len(h.body["challenge_id"]) == 32 and len(bytes.fromhex(h.body["challenge"])) == 32
    assert 59 <= h.body["expires"] - time.time() <= 61
    r = api.proof(d.proof_body(h))
    assert r.status == 200, r.body
    cert = x509.load_der_x509_certificate(base64.b64decode(r.body["certificate_b64"]))
    # CN = device ID, then OU = tenant: what the broker's plugin reads (RFC 4514 lists the
    # subject's attributes in reverse).
    assert cert.subject.rfc4514_string() == f"OU=acme,CN={d.device_id}"
    assert r.body["broker"] == {
        "host": "localhost",
        "port": 18883,
        "ca_b64": base64.b64encode(api.root).decode(),
    }
    prefix = f"qlink/acme/{d.device_id}"
    assert r.body["topics"] == {t: f"{prefix}/{t}" for t in ("telemetry", "event", "cmd")}
    assert r.body["policy"] == {"telemetry_interval_ms": 2000, "renew_at_pct": 67}
    signer = x509.load_pem_x509_certificate((api.settings.ca_dir / "command.pem").read_bytes())
    assert base64.b64decode(r.body["command_signer_b64"]) == signer.public_bytes(
        serialization.Encoding.DER
    )
    assert api.policy.registered[d.device_id] == "acme"
    dev = api.registry.device(d.device_id)
    assert dev is not None and dev.state == "onboarded"
    assert dev.cert_der == base64.b64decode(r.body["certificate_b64"])


def test_retry_by_onboarded_device_returns_same_certificate(api: Api) -> None:
    d = api.device()
    first = api.proof(d.proof_body(api.hello(d)))
    before = api.dump()
    hello = api.hello(d)
    again = api.proof(d.proof_body(hello))
    assert again.status == 200 and again.body == first.body
    # Only the record of the challenge it used changed.
    with sqlite3.connect(api.settings.db_path) as db:
        columns = [c[1] for c in db.execute("PRAGMA table_info(devices)")]
    used = [columns.index("used_challenge"), columns.index("used_proof")]
    after = api.dump()
    row = next(r for r in after[0] if r[0] == d.device_id)
    assert row[used[0]] == int(hello.body["challenge_id"][:16], 16)

    def kept(dump: tuple[list[Any], list[Any]]) -> list[Any]:
        return [[v for i, v in enumerate(r) if i not in used] for r in dump[0]] + dump[1]

    assert kept(after) == kept(before)


# -- hello ---------------------------------------------------------------------------------
def test_hello_unregistered_device(api: Api) -> None:
    before = api.dump()
    refused(api.hello(api.device(register=False)), 403, "not_registered")
    assert api.dump() == before


def test_hello_device_in_inactive_batch(api: Api) -> None:
    d = api.device(batch="off")
    before = api.dump()
    refused(api.hello(d), 403, "not_registered")
    assert api.dump() == before


def test_hello_id_must_be_hash_of_key(api: Api) -> None:
    d, other = api.device(), api.device()
    r = api.post(
        "/v1/onboard/hello", {"device_id": d.device_id, "public_key": other.public_key.hex()}
    )
    refused(r, 400, "id_mismatch")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"device_id": "0" * 64},
        {"device_id": "0" * 63, "public_key": "04" * 65},
        {"device_id": "0" * 65, "public_key": "04" * 65},
        {"device_id": "0" * 64, "public_key": "04" * 64},
        {"device_id": "z" * 64, "public_key": "04" * 65},
        {"device_id": 5, "public_key": "04" * 65},
        ["not", "an", "object"],
    ],
    ids=["empty", "no_key", "id_63", "id_65", "key_128", "id_not_hex", "id_not_string", "array"],
)
def test_hello_malformed_fields(api: Api, body: Any) -> None:
    refused(api.post("/v1/onboard/hello", body), 400, "bad_request")


def test_hello_body_not_json(api: Api) -> None:
    refused(api.post("/v1/onboard/hello", b"{nope"), 400, "bad_request")


# -- proof ---------------------------------------------------------------------------------
def _expect_refusal(api: Api, d: SimDevice, body: dict[str, Any], status: int, code: str) -> None:
    before = api.dump()
    refused(api.proof(body), status, code)
    assert api.dump() == before
    dev = api.registry.device(d.device_id)
    assert dev is not None and dev.state == "registered"


def test_proof_signed_for_another_host(api: Api) -> None:
    d = api.device()
    _expect_refusal(
        api, d, d.proof_body(api.hello(d), sign_host="evil.example"), 403, "bad_signature"
    )


def test_proof_signed_by_another_key(api: Api) -> None:
    d, other = api.device(), api.device(register=False)
    h = api.hello(d)
    sig = other.sign(bytes.fromhex(h.body["challenge"]))
    _expect_refusal(api, d, d.proof_body(h, signature=sig), 403, "bad_signature")


def test_proof_signature_over_other_challenge(api: Api) -> None:
    d = api.device()
    h = api.hello(d)
    _expect_refusal(api, d, d.proof_body(h, signature=d.sign(b"\x00" * 32)), 403, "bad_signature")


def test_proof_signature_out_of_range(api: Api) -> None:
    d = api.device()
    _expect_refusal(
        api, d, d.proof_body(api.hello(d), signature=b"\xff" * 64), 403, "bad_signature"
    )


def test_proof_message_layout() -> None:
    msg = proof_message(b"\x01" * 32, "ab" * 32, "localhost")
    assert msg == b"qlink-onboard-v1\x00" + b"\x01" * 32 + b"ab" * 32 + b"\x00localhost"


def test_same_proof_retried_returns_the_same_answer(api: Api) -> None:
    d = api.device()
    body = d.proof_body(api.hello(d))
    first = api.proof(body)
    assert first.status == 200
    before = api.dump()
    # The answer it missed, without telling the broker again (it would fail now).
    del api.policy.registered[d.device_id]
    api.policy.fail_next = PolicyError("the broker is down")
    try:
        again = api.proof(body)
    finally:
        api.policy.fail_next = None
    assert again.status == 200 and again.body == first.body
    assert d.device_id not in api.policy.registered
    assert api.dump() == before


def test_other_proof_on_a_used_challenge_is_refused(api: Api) -> None:
    d = api.device()
    h = api.hello(d)
    assert api.proof(d.proof_body(h)).status == 200
    before = api.dump()
    # Signed again (ECDSA is randomised here): another proof, so a replay of the challenge.
    refused(api.proof(d.proof_body(h)), 403, "challenge_used")
    assert api.dump() == before


def test_devices_onboarding_at_once_each_end_as_alone(api: Api) -> None:
    """Hellos and proofs that reach the server together each end as they would alone: every
    device onboarded with its own certificate, its challenge used and one audit event, and of
    two proofs racing for one challenge exactly one wins (the other is a replay)."""
    devices = [api.device() for _ in range(8)]
    hellos = api.post_together(
        [
            ("/v1/onboard/hello", {"device_id": d.device_id, "public_key": d.public_key.hex()})
            for d in devices
        ]
    )
    assert [h.status for h in hellos] == [200] * 8
    racer = devices[0]
    proofs = [d.proof_body(h) for d, h in zip(devices, hellos, strict=True)]
    rival = racer.proof_body(hellos[0])  # signed again: another proof of the same challenge
    answers = api.post_together([("/v1/onboard/proof", b) for b in [*proofs, rival]])
    race = [answers[0], answers[-1]]
    assert sorted(a.status for a in race) == [200, 403]
    lost = next(a for a in race if a.status == 403)
    refused(lost, 403, "challenge_used")
    assert [a.status for a in answers[1:-1]] == [200] * 7
    won = next(a for a in race if a.status == 200)
    for d, a in zip(devices, [won, *answers[1:-1]], strict=True):
        dev = api.registry.device(d.device_id)
        assert dev is not None and dev.state == "onboarded"
        assert dev.cert_der == base64.b64decode(a.body["certificate_b64"])
    with sqlite3.connect(api.settings.db_path) as db:
        used = db.execute(
            "SELECT COUNT(*) FROM devices WHERE used_challenge IS NOT NULL AND device_id IN"
            f" ({','.join('?' * 8)})",
            [d.device_id for d in devices],
        ).fetchone()[0]
        events = db.execute(
            "SELECT COUNT(*) FROM audit WHERE action = 'device.onboard' AND target IN"
            f" ({','.join('?' * 8)})",
            [f"device:{d.device_id}" for d in devices],
        ).fetchone()[0]
    assert (used, events) == (8, 8)


@pytest.mark.parametrize("path", ["/v1/onboard/hello", "/v1/onboard/proof"])
def test_unknown_fields_are_refused(api: Api, path: str) -> None:
    d = api.device()
    h = api.hello(d)
    body = (
        {"device_id": d.device_id, "public_key": d.public_key.hex()}
        if path.endswith("hello")
        else d.proof_body(h)
    )
    before = api.dump()
    r = api.post(path, {**body, "admin": True})
    refused(r, 400, "bad_request")
    assert "unknown field(s) 'admin'" in r.body["detail"]
    assert api.dump() == before


def test_proof_unknown_challenge(api: Api) -> None:
    d = api.device()
    body = d.proof_body(api.hello(d))
    body["challenge_id"] = "0" * 32
    _expect_refusal(api, d, body, 403, "unknown_challenge")


def _later(monkeypatch: pytest.MonkeyPatch, at: float) -> None:
    """The onboarding rules' clock at `at` (the clock rule is the server's `now > expires`)."""
    monkeypatch.setattr(onboarding, "time", SimpleNamespace(time=lambda: at))


def test_proof_expired_challenge(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    d = api.device()
    h = api.hello(d)
    body = d.proof_body(h)
    _later(monkeypatch, h.body["expires"] + 1)
    _expect_refusal(api, d, body, 403, "challenge_expired")


def test_a_lost_answer_is_given_again_after_the_challenge_expired(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = api.device()
    h = api.hello(d)
    body = d.proof_body(h)
    first = api.proof(body)
    assert first.status == 200
    before = api.dump()
    _later(monkeypatch, h.body["expires"] + 600)
    again = api.proof(body)
    assert again.status == 200 and again.body == first.body
    refused(api.proof(d.proof_body(h)), 403, "challenge_used")  # signed again: another proof
    assert api.dump() == before


def test_a_hello_writes_nothing(api: Api) -> None:
    d = api.device()
    with sqlite3.connect(api.settings.db_path) as db:
        # Changes another connection commits change this connection's data_version.
        version = db.execute("PRAGMA data_version").fetchone()
        hellos = [api.hello(d) for _ in range(5)]
        assert {h.status for h in hellos} == {200}
        assert len({h.body["challenge_id"] for h in hellos}) == 5
        assert db.execute("PRAGMA data_version").fetchone() == version
        # The challenge a proof uses is recorded then, as used, on the device's row: its
        # order (the ID's first 8 bytes) and the proof's digest.
        assert api.proof(d.proof_body(hellos[2])).status == 200
        assert db.execute("PRAGMA data_version").fetchone() != version
        rows = db.execute(
            "SELECT used_challenge, length(used_proof) FROM devices WHERE device_id = ?",
            (d.device_id,),
        ).fetchall()
    assert rows == [(int(hellos[2].body["challenge_id"][:16], 16), 64)]


def test_using_a_challenge_voids_those_given_before_it(api: Api) -> None:
    d = api.device()
    hellos = [api.hello(d) for _ in range(4)]
    ids = [h.body["challenge_id"] for h in hellos]
    assert ids == sorted(ids)  # given in order
    assert api.proof(d.proof_body(hellos[2])).status == 200
    before = api.dump()
    for earlier in hellos[:2]:
        refused(api.proof(d.proof_body(earlier)), 403, "challenge_used")
    assert api.dump() == before
    # One given after it still stands, and so does a new one.
    assert api.proof(d.proof_body(hellos[3])).status == 200
    assert api.proof(d.proof_body(api.hello(d))).status == 200


def test_a_hello_after_a_restart_with_the_clock_gone_back_gives_a_challenge_that_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted server does not know the order of the challenges it gave before: the
    device's last used challenge, read at hello, puts the new one after it."""
    settings = Settings(data_dir=tmp_path / "d", broker_port=18883)
    d = SimDevice("https://localhost", b"")
    hello = {"device_id": d.device_id, "public_key": d.public_key.hex()}
    first = Application.for_server(settings, broker_port=18883, policy=MemoryPolicy())
    try:
        first.create_tenant("acme")
        first.create_batch("b", "acme")
        first.import_devices("b", [d.csv_line()])
        first.onboarding.proof(d.proof_body(ApiResponse(200, first.onboarding.hello(hello))))
    finally:
        first.close()
    now = time.time()
    monkeypatch.setattr(onboarding, "time", SimpleNamespace(time=lambda: now - 3600))
    second = Application.for_server(settings, broker_port=18883, policy=MemoryPolicy())
    try:
        h = second.onboarding.hello(hello)
        assert h["expires"] > now  # after the used one's expiry, not an hour before
        device_id, answer = second.onboarding.proof(d.proof_body(ApiResponse(200, h)))
        assert device_id == d.device_id and answer["certificate_b64"]
    finally:
        second.close()


def test_a_challenge_is_bound_to_the_device_it_was_given_to(api: Api) -> None:
    a, b = api.device(), api.device()
    h = api.hello(a)
    # b answers a's challenge: signed with its own key, its own CSR.
    _expect_refusal(api, b, b.proof_body(h), 403, "unknown_challenge")
    assert api.registry.device(a.device_id).state == "registered"  # type: ignore[union-attr]


@pytest.mark.parametrize("byte", [0, 3, 5, 15], ids=["expiry", "expiry_low", "nonce", "tag"])
def test_a_challenge_id_changed_anywhere_is_unknown(api: Api, byte: int) -> None:
    d = api.device()
    body = d.proof_body(api.hello(d))
    cid = bytearray(bytes.fromhex(body["challenge_id"]))
    cid[byte] ^= 1
    body["challenge_id"] = cid.hex()
    _expect_refusal(api, d, body, 403, "unknown_challenge")


def test_a_proof_may_reach_another_worker_or_the_server_after_a_restart(
    tmp_path: Path,
) -> None:
    """Two applications over one data directory, as two API workers or one server before and
    after a restart: a challenge one gave is answered at the other."""
    settings = Settings(data_dir=tmp_path / "d", broker_port=18883)
    first = Application.for_server(settings, broker_port=18883, policy=MemoryPolicy())
    try:
        first.create_tenant("acme")
        first.create_batch("b", "acme")
        d = SimDevice("https://localhost", b"")
        first.import_devices("b", [d.csv_line()])
        h = first.onboarding.hello({"device_id": d.device_id, "public_key": d.public_key.hex()})
    finally:
        first.close()
    key = settings.challenge_key_path
    assert key.stat().st_mode & 0o777 == 0o600
    second = Application.for_server(settings, broker_port=18883, policy=MemoryPolicy())
    try:
        device_id, answer = second.onboarding.proof(d.proof_body(ApiResponse(200, h)))
        assert device_id == d.device_id and answer["certificate_b64"]
    finally:
        second.close()


def test_proof_csr_with_another_key(api: Api) -> None:
    d = api.device()
    other = ec.generate_private_key(ec.SECP256R1())
    _expect_refusal(api, d, d.proof_body(api.hello(d), csr_key=other), 403, "csr_key_mismatch")


def test_proof_and_csr_both_of_an_impostors_key(api: Api) -> None:
    # The proof is checked against the registered key even when the CSR brings another one
    # that the signature does verify with.
    d, impostor = api.device(), api.device(register=False)
    h = api.hello(d)
    sig = impostor.sign(bytes.fromhex(h.body["challenge"]))
    body = d.proof_body(h, signature=sig, csr_key=impostor.key)
    _expect_refusal(api, d, body, 403, "bad_signature")


def test_proof_csr_with_a_key_on_another_curve(api: Api) -> None:
    d = api.device()
    p384 = ec.generate_private_key(ec.SECP384R1())
    _expect_refusal(api, d, d.proof_body(api.hello(d), csr_key=p384), 403, "csr_key_mismatch")


@pytest.mark.parametrize("subject", ["other", "UPPER", "0" * 64])
def test_proof_csr_with_another_subject(api: Api, subject: str) -> None:
    d = api.device()
    cn = d.device_id.upper() if subject == "UPPER" else subject
    _expect_refusal(api, d, d.proof_body(api.hello(d), csr_subject=cn), 403, "csr_subject_mismatch")


def test_proof_csr_with_extra_subject_attribute(api: Api) -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    d = api.device()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, d.device_id),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x"),
        ]
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(d.key, hashes.SHA256())
    der = csr.public_bytes(serialization.Encoding.DER)
    _expect_refusal(api, d, d.proof_body(api.hello(d), csr_der=der), 403, "csr_subject_mismatch")


def test_proof_csr_not_der(api: Api) -> None:
    d = api.device()
    _expect_refusal(
        api, d, d.proof_body(api.hello(d), csr_der=b"\x30\x03\x02\x01\x01"), 400, "bad_csr"
    )


def test_proof_csr_self_signature_broken(api: Api) -> None:
    d = api.device()
    der = bytearray(make_csr(d.key, d.device_id))
    der[-5] ^= 0x01  # inside the signature's s value
    _expect_refusal(api, d, d.proof_body(api.hello(d), csr_der=bytes(der)), 400, "bad_csr")


@pytest.mark.parametrize(
    "patch",
    [
        {"challenge_id": "0" * 31},
        {"signature": "00" * 63},
        {"csr_b64": "***"},
        {"csr_b64": ""},
        {"csr_b64": "A" * 4100},
        {"csr_b64": 7},
    ],
    ids=["cid_short", "sig_short", "csr_not_b64", "csr_empty", "csr_too_long", "csr_not_string"],
)
def test_proof_malformed_fields(api: Api, patch: dict[str, Any]) -> None:
    d = api.device()
    body = {**d.proof_body(api.hello(d)), **patch}
    _expect_refusal(api, d, body, 400, "bad_request")


def test_policy_failure_leaves_device_retryable(api: Api) -> None:
    d = api.device()
    api.policy.fail_next = PolicyError("broker down")
    h = api.hello(d)
    before = api.dump()
    refused(api.proof(d.proof_body(h)), 503, "broker_unavailable")
    assert api.dump() == before
    # The same challenge is still good: nothing was consumed.
    assert api.proof(d.proof_body(h)).status == 200


def test_unknown_path_is_json_error(api: Api) -> None:
    r = api.get("/nope")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_retry_after_certificate_expiry_gets_a_new_certificate(api: Api) -> None:
    d = api.device()
    first = api.proof(d.proof_body(api.hello(d)))
    dev = api.registry.device(d.device_id)
    assert dev is not None and dev.onboarded_at is not None
    with sqlite3.connect(api.settings.db_path) as db:
        db.execute(
            "UPDATE devices SET not_after = ? WHERE device_id = ?", (time.time() - 1, d.device_id)
        )
    again = api.proof(d.proof_body(api.hello(d)))
    assert again.status == 200
    assert again.body["certificate_b64"] != first.body["certificate_b64"]
    after = api.registry.device(d.device_id)
    assert after is not None and after.cert_der == base64.b64decode(again.body["certificate_b64"])
    assert after.not_after is not None and after.not_after > time.time()
    assert after.onboarded_at == dev.onboarded_at
