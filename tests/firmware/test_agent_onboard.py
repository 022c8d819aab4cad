# agent.onboard with a fake identity and a fake HTTPS client: the exact proof message, the
# requests sent, the stored result, and every refusal or malformed answer; the command signer's
# certificate checked against the pinned root (certificates made by pyca/cryptography: certs.py).
# The signer check loads qdid.p256 beside the test's certificates: 96 KiB, half the RP2040's
# budget (on a device the curve code is resident since the identity's boot anyway).
# heapsize: 96k
import os
import hashlib
import binascii
from agent import onboard, store
from agent.errors import OnboardingError, LinkError
from agent import log as logmod
from fwtest import raises
import certs

PUB = certs.DEVICE_PUB
DEVICE_ID = certs.DEVICE_ID
CHALLENGE = bytes(range(100, 132))
CID = "0123456789abcdef0123456789abcdef"
SIG = bytes(range(64))
CSR = b"\x30\x03\x02\x01\x00"
CA = b"\x30\x03\x02\x01\x07"
CERT = certs.DEVICE_CERT
ROOT = certs.ROOT


class FakeIdentity:
    def __init__(self):
        self.device_id = DEVICE_ID
        self.public_key = PUB
        self.signed = []

    def sign_digest(self, d):
        self.signed.append(bytes(d))
        return SIG

    def csr(self):
        return CSR


class FakeClient:
    def __init__(self, answers, host="qlink.example"):
        self.host = host
        self.answers = list(answers)
        self.posts = []

    def post(self, path, obj):
        self.posts.append((path, obj))
        a = self.answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a


def b64(b):
    return binascii.b2a_base64(b).decode().strip()


def hello_ok():
    return 200, {
        "challenge_id": CID,
        "challenge": binascii.hexlify(CHALLENGE).decode(),
        "expires": 1,
    }


def proof_ok(**over):
    doc = {
        "device_id": DEVICE_ID,
        "certificate_b64": b64(CERT),
        "chain_b64": [b64(CA)],
        "broker": {"host": "localhost", "port": 8883, "ca_b64": b64(CA)},
        "topics": {
            "telemetry": "qlink/acme/%s/telemetry" % DEVICE_ID,
            "event": "qlink/acme/%s/event" % DEVICE_ID,
            "cmd": "qlink/acme/%s/cmd" % DEVICE_ID,
        },
        "policy": {"telemetry_interval_ms": 2000, "renew_at_pct": 67},
        "command_signer_b64": b64(certs.SIGNER),
    }
    for k in over:
        doc[k] = over[k]
    return 200, doc


_n = [0]


def tmpdir():
    _n[0] += 1
    d = "/tmp/qlink-onboard-%d-%d" % (os.getpid() if hasattr(os, "getpid") else 0, _n[0])
    try:
        os.mkdir(d)
    except OSError:
        pass
    store.clear(d)
    return d


def test_proof_digest_is_sha256_of_the_documented_message():
    expect = hashlib.sha256(
        b"qlink-onboard-v1\x00" + CHALLENGE + DEVICE_ID.encode() + b"\x00" + b"qlink.example"
    ).digest()
    assert onboard.proof_digest(CHALLENGE, DEVICE_ID, "qlink.example") == expect


def test_onboarding_sends_hello_then_proof_and_stores_the_result():
    ident = FakeIdentity()
    client = FakeClient([hello_ok(), proof_ok()])
    d = tmpdir()
    st = onboard.run(client, ident, d, ROOT)
    assert client.posts[0] == (
        "/v1/onboard/hello",
        {"device_id": DEVICE_ID, "public_key": binascii.hexlify(PUB).decode()},
    )
    path, proof = client.posts[1]
    assert path == "/v1/onboard/proof"
    assert proof == {
        "challenge_id": CID,
        "signature": binascii.hexlify(SIG).decode(),
        "csr_b64": b64(CSR),
    }
    # The signed digest binds the server host name the TLS stack verified.
    assert ident.signed == [onboard.proof_digest(CHALLENGE, DEVICE_ID, "qlink.example")]
    assert st.cert_der == CERT and st.broker_port == 8883 and st.broker_ca == CA
    assert st.signer == certs.SIGNER_PUB
    assert (st.not_before, st.not_after) == (1767225600, 1798761600)  # 2026-01-01, 2027-01-01
    again = store.load(d, DEVICE_ID, PUB)
    assert again.cert_der == CERT and again.signer == certs.SIGNER_PUB
    assert again.topics["telemetry"].endswith("/telemetry")
    assert again.policy["renew_at_pct"] == 67
    with open(d + "/cert.der", "rb") as f:
        assert f.read() == CERT


def test_refusal_raises_with_code_and_detail_and_stores_nothing():
    d = tmpdir()
    refusal = (403, {"error": "not_registered", "detail": "register the device in a batch"})
    e = raises(OnboardingError, onboard.run, FakeClient([refusal]), FakeIdentity(), d, ROOT)
    assert e.code == "not_registered"
    assert e.detail == "register the device in a batch"
    assert e.status == 403
    assert str(e) == "not_registered: register the device in a batch"
    assert store.load(d, DEVICE_ID, PUB) is None


def test_rate_limit_carries_the_clients_retry_after():
    c = FakeClient([(429, {"error": "rate_limited", "detail": "retry in 9 s"})])
    c.retry_after = 9
    e = raises(OnboardingError, onboard.run, c, FakeIdentity(), tmpdir(), ROOT)
    assert (e.code, e.status, e.retry_after) == ("rate_limited", 429, 9)


def test_proof_refusal_codes_raise():
    for code in ("bad_signature", "challenge_expired", "csr_key_mismatch"):
        d = tmpdir()
        c = FakeClient([hello_ok(), (403, {"error": code, "detail": "x"})])
        assert raises(OnboardingError, onboard.run, c, FakeIdentity(), d, ROOT).code == code


def test_server_error_and_unframed_answers_are_link_errors():
    for ans in ((500, None), (503, {"error": "busy"}), (404, None), (200, None), (200, [1])):
        raises(LinkError, onboard.run, FakeClient([ans]), FakeIdentity(), tmpdir(), ROOT)


def test_malformed_challenge_is_refused_before_signing():
    for doc in (
        {"challenge_id": CID, "challenge": "00"},
        {"challenge_id": CID, "challenge": "zz" * 32},
        {"challenge_id": CID, "challenge": "AB" * 32},
        {"challenge_id": "x", "challenge": "00" * 32},
        {"challenge": "00" * 32},
    ):
        ident = FakeIdentity()
        e = raises(OnboardingError, onboard.run, FakeClient([(200, doc)]), ident, tmpdir(), ROOT)
        assert e.code == "bad_answer"
        assert ident.signed == []


def test_unusable_proof_answers_are_refused_and_not_stored():
    no_validity = b"\x30\x43\x04\x41" + PUB  # DER, carries the key, but no X.509 validity
    bad = (
        {"device_id": "0" * 64},
        {"certificate_b64": "!!!"},
        {"certificate_b64": b64(b"not der")},
        {"certificate_b64": b64(certs.OTHER_CERT)},
        {"certificate_b64": b64(no_validity)},
        {"broker": {"host": "", "port": 8883, "ca_b64": b64(CA)}},
        {"broker": {"host": "h", "port": 0, "ca_b64": b64(CA)}},
        {"broker": {"host": "h", "port": 8883, "ca_b64": "AAAA"}},
        {"broker": None},
        {"topics": {"telemetry": "qlink/acme/other/telemetry"}},
        {"topics": {}},
    )
    for over in bad:
        d = tmpdir()
        c = FakeClient([hello_ok(), proof_ok(**over)])
        e = raises(OnboardingError, onboard.run, c, FakeIdentity(), d, ROOT)
        assert e.code == "bad_answer", over
        assert store.load(d, DEVICE_ID, PUB) is None, over


# -- the command signer's certificate (docs/protocol.md "Command channel") --------------------


def _refused_signer(signer_der, why):
    # The answer is refused like any other unusable one: bad_answer, the reason, nothing stored.
    d = tmpdir()
    c = FakeClient([hello_ok(), proof_ok(command_signer_b64=b64(signer_der))])
    e = raises(OnboardingError, onboard.run, c, FakeIdentity(), d, ROOT)
    assert (e.code, e.status) == ("bad_answer", 200)
    assert e.detail == "proof: " + why, e.detail
    assert store.load(d, DEVICE_ID, PUB) is None
    assert os.listdir(d) == []


def test_signer_signed_by_another_key_than_the_pinned_root_is_refused():
    _refused_signer(certs.SIGNER_FOREIGN, "command signer is not signed by the pinned root")


def test_signer_without_the_command_signing_usage_is_refused():
    why = "command signer lacks the command-signing usage, or has others"
    _refused_signer(certs.SIGNER_NO_EKU, why)
    _refused_signer(certs.SIGNER_TLS, why)


def test_signer_with_another_usage_besides_command_signing_is_refused():
    # docs/protocol.md: the command-signing usage "and no other": a TLS key never signs commands.
    _refused_signer(
        certs.SIGNER_EXTRA, "command signer lacks the command-signing usage, or has others"
    )


def test_signer_with_a_key_or_signature_the_device_cannot_check_is_refused():
    why = "command signer certificate unreadable, not ECDSA/SHA-256 or not P-256"
    _refused_signer(certs.SIGNER_P384, why)
    _refused_signer(certs.SIGNER_SHA384, why)
    _refused_signer(b"\x30\x03\x02\x01\x01", why)
    _refused_signer(certs.SIGNER[:-1], why)


def test_signer_altered_after_signing_is_refused():
    # One byte of the subject changed: the root's signature no longer covers it.
    signer = bytearray(certs.SIGNER)
    i = signer.find(b"\x0c\x01s")  # subject CN "s" (UTF8String)
    assert i > 0
    signer[i + 2] = ord("t")
    _refused_signer(bytes(signer), "command signer is not signed by the pinned root")


def test_signer_not_base64_is_refused():
    d = tmpdir()
    for bad in ("!!!", 7):
        c = FakeClient([hello_ok(), proof_ok(command_signer_b64=bad)])
        e = raises(OnboardingError, onboard.run, c, FakeIdentity(), d, ROOT)
        assert e.detail == "proof: command_signer_b64 malformed"
    assert store.load(d, DEVICE_ID, PUB) is None


def test_answer_without_a_signer_is_stored_and_commands_will_be_refused():
    # A server without the command channel: the device onboards and says why commands will fail.
    d = tmpdir()
    doc = proof_ok()[1]
    del doc["command_signer_b64"]
    lines = []
    logmod._sink = lines.append
    try:
        st = onboard.run(FakeClient([hello_ok(), (200, doc)]), FakeIdentity(), d, ROOT)
    finally:
        logmod._sink = None
    assert st.signer is None and store.load(d, DEVICE_ID, PUB).signer is None
    assert "W onboard: no command signer in the answer; commands will be refused" in lines


def test_signer_key_is_what_the_certificate_holds():
    assert onboard.signer_key(certs.SIGNER, ROOT) == (certs.SIGNER_PUB, None)
    # A pinned root the device cannot check with: said as such.
    assert onboard.signer_key(certs.SIGNER, b"\x30\x03\x02\x01\x07") == (
        None,
        "the pinned root has no P-256 key to check the command signer with",
    )
