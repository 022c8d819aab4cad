# agent.store: atomic save, validated load; corrupt or foreign data is treated as absent.
import os
import json
import binascii
from agent import store
from agent import log as logmod

PUB = b"\x04" + bytes(range(1, 65))
DEVICE_ID = "ab" * 32
CERT = b"\x30\x43\x04\x41" + PUB
CA = b"\x30\x03\x02\x01\x07"
BROKER = {"host": "localhost", "port": 8883, "ca_b64": binascii.b2a_base64(CA).decode().strip()}
TOPICS = {"telemetry": "qlink/acme/%s/telemetry" % DEVICE_ID}
D = "/tmp/qlink-store-test"


def fresh():
    try:
        os.mkdir(D)
    except OSError:
        pass
    store.clear(D)
    for n in ("cert.der.tmp", "onboard.json.tmp"):
        try:
            os.remove(D + "/" + n)
        except OSError:
            pass


def saved():
    fresh()
    store.save(D, DEVICE_ID, CERT, BROKER, TOPICS, {"telemetry_interval_ms": 500})


def capture():
    lines = []
    logmod._sink = lines.append
    return lines


def test_save_then_load_round_trip_and_no_temp_files_left():
    saved()
    st = store.load(D, DEVICE_ID, PUB)
    assert st.cert_der == CERT
    assert (st.broker_host, st.broker_port, st.broker_ca) == ("localhost", 8883, CA)
    assert st.topics == TOPICS
    assert st.policy == {"telemetry_interval_ms": 500}
    names = os.listdir(D)
    assert sorted(names) == ["cert.der", "onboard.json"]


def test_nothing_stored_is_absent_silently():
    fresh()
    lines = capture()
    assert store.load(D, DEVICE_ID, PUB) is None
    logmod._sink = None
    assert lines == []


def test_corrupt_data_is_absent_and_logged():
    cases = (
        ("onboard.json", b"{broken"),
        ("onboard.json", b"[]"),
        ("cert.der", CERT[:-1]),  # digest no longer matches
        ("cert.der", b"\x30\x00"),
    )
    for name, data in cases:
        saved()
        with open(D + "/" + name, "wb") as f:
            f.write(data)
        lines = capture()
        assert store.load(D, DEVICE_ID, PUB) is None
        logmod._sink = None
        assert len(lines) == 1 and lines[0].startswith("W store: stored onboarding data unusable")


def test_half_written_pair_is_absent():
    saved()
    os.remove(D + "/onboard.json")
    assert store.load(D, DEVICE_ID, PUB) is None


def test_other_identity_is_absent():
    saved()
    lines = capture()
    assert store.load(D, "cd" * 32, PUB) is None
    logmod._sink = None
    assert lines == ["I store: stored certificate is for another identity; onboarding again"]


def test_certificate_for_another_key_is_absent():
    saved()
    assert store.load(D, DEVICE_ID, b"\x04" + bytes(64)) is None


def test_tampered_broker_is_absent():
    saved()
    with open(D + "/onboard.json") as f:
        meta = json.loads(f.read())
    meta["broker"]["port"] = "8883"
    with open(D + "/onboard.json", "w") as f:
        f.write(json.dumps(meta))
    assert store.load(D, DEVICE_ID, PUB) is None


def test_clear_removes_both_files():
    saved()
    store.clear(D)
    assert os.listdir(D) == []


def test_der_certificate_ok_checks_the_outer_length():
    assert not store.der_certificate_ok(b"\x30\x00")  # shorter than any certificate
    assert store.der_certificate_ok(b"\x30\x02\x05\x00")
    assert store.der_certificate_ok(b"\x30\x81\x01\x00")
    assert not store.der_certificate_ok(b"\x30\x81\x02\x00")  # announces more than is there
    assert not store.der_certificate_ok(b"\x30\x84\x00\x00\x00\x00")  # 4 length bytes
    assert not store.der_certificate_ok(b"\x31\x02\x05\x00")  # a SET, not a SEQUENCE
