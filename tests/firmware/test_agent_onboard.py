# agent.onboard with a fake identity and a fake HTTPS client: the exact proof message, the
# requests sent, the stored result, and every refusal or malformed answer.
# heapsize: 64k
import os
import hashlib
import binascii
from agent import onboard, store
from agent.errors import OnboardingError, LinkError
from fwtest import raises

PUB = b"\x04" + bytes(range(1, 65))
DEVICE_ID = binascii.hexlify(hashlib.sha256(PUB).digest()).decode()
CHALLENGE = bytes(range(100, 132))
CID = "0123456789abcdef0123456789abcdef"
SIG = bytes(range(64))
CSR = b"\x30\x03\x02\x01\x00"
CA = b"\x30\x03\x02\x01\x07"


def fake_cert(pub):
    # One DER SEQUENCE that carries the public key, which is all the device checks.
    body = b"\x04\x41" + pub
    return b"\x30" + bytes([len(body)]) + body


CERT = fake_cert(PUB)


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
        "policy": {"telemetry_interval_ms": 2000},
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
    st = onboard.run(client, ident, d)
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
    again = store.load(d, DEVICE_ID, PUB)
    assert again.cert_der == CERT
    assert again.topics["telemetry"].endswith("/telemetry")
    with open(d + "/cert.der", "rb") as f:
        assert f.read() == CERT


def test_refusal_raises_with_code_and_detail_and_stores_nothing():
    d = tmpdir()
    refusal = (403, {"error": "not_registered", "detail": "register the device in a batch"})
    e = raises(OnboardingError, onboard.run, FakeClient([refusal]), FakeIdentity(), d)
    assert e.code == "not_registered"
    assert e.detail == "register the device in a batch"
    assert e.status == 403
    assert str(e) == "not_registered: register the device in a batch"
    assert store.load(d, DEVICE_ID, PUB) is None


def test_rate_limit_carries_the_clients_retry_after():
    c = FakeClient([(429, {"error": "rate_limited", "detail": "retry in 9 s"})])
    c.retry_after = 9
    e = raises(OnboardingError, onboard.run, c, FakeIdentity(), tmpdir())
    assert (e.code, e.status, e.retry_after) == ("rate_limited", 429, 9)


def test_proof_refusal_codes_raise():
    for code in ("bad_signature", "challenge_expired", "csr_key_mismatch"):
        d = tmpdir()
        c = FakeClient([hello_ok(), (403, {"error": code, "detail": "x"})])
        assert raises(OnboardingError, onboard.run, c, FakeIdentity(), d).code == code


def test_server_error_and_unframed_answers_are_link_errors():
    for ans in ((500, None), (503, {"error": "busy"}), (404, None), (200, None), (200, [1])):
        raises(LinkError, onboard.run, FakeClient([ans]), FakeIdentity(), tmpdir())


def test_malformed_challenge_is_refused_before_signing():
    for doc in (
        {"challenge_id": CID, "challenge": "00"},
        {"challenge_id": CID, "challenge": "zz" * 32},
        {"challenge_id": CID, "challenge": "AB" * 32},
        {"challenge_id": "x", "challenge": "00" * 32},
        {"challenge": "00" * 32},
    ):
        ident = FakeIdentity()
        e = raises(OnboardingError, onboard.run, FakeClient([(200, doc)]), ident, tmpdir())
        assert e.code == "bad_answer"
        assert ident.signed == []


def test_unusable_proof_answers_are_refused_and_not_stored():
    other = fake_cert(b"\x04" + bytes(64))
    bad = (
        {"device_id": "0" * 64},
        {"certificate_b64": "!!!"},
        {"certificate_b64": b64(b"not der")},
        {"certificate_b64": b64(other)},
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
        e = raises(OnboardingError, onboard.run, c, FakeIdentity(), d)
        assert e.code == "bad_answer", over
        assert store.load(d, DEVICE_ID, PUB) is None, over
