# agent.store: atomic save, validated load; corrupt or foreign data is treated as absent; the
# command signer key and the last command seq.
import os
import json
import binascii
from agent import store
from agent import log as logmod
import certs

PUB = certs.DEVICE_PUB
DEVICE_ID = certs.DEVICE_ID
CERT = certs.DEVICE_CERT
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
    for n in ("cert.der.tmp", "onboard.json.tmp", "cmd_seq.bin", "cmd_seq.bin.tmp"):
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
    assert (st.not_before, st.not_after) == (1767225600, 1798761600)  # from the certificate
    assert st.signer is None
    names = os.listdir(D)
    assert sorted(names) == ["cert.der", "onboard.json"]


def test_signer_key_is_stored_with_the_onboarding_result():
    fresh()
    store.save(D, DEVICE_ID, CERT, BROKER, TOPICS, {}, certs.SIGNER_PUB)
    with open(D + "/onboard.json") as f:
        meta = json.loads(f.read())
    assert meta["command_signer"] == binascii.hexlify(certs.SIGNER_PUB).decode()
    assert store.load(D, DEVICE_ID, PUB).signer == certs.SIGNER_PUB
    assert sorted(os.listdir(D)) == ["cert.der", "onboard.json"]


def test_onboard_json_older_than_the_command_channel_still_loads_without_a_signer():
    saved()
    with open(D + "/onboard.json") as f:
        meta = json.loads(f.read())
    assert "command_signer" not in meta
    st = store.load(D, DEVICE_ID, PUB)
    assert st is not None and st.signer is None


def test_malformed_signer_key_makes_the_data_unusable():
    for bad in ("04" + "0" * 127, "05" + "0" * 128, "04" + "G" * 128, "04" + "AB" * 64, 7):
        saved()
        with open(D + "/onboard.json") as f:
            meta = json.loads(f.read())
        meta["command_signer"] = bad
        with open(D + "/onboard.json", "w") as f:
            f.write(json.dumps(meta))
        lines = capture()
        assert store.load(D, DEVICE_ID, PUB) is None, bad
        logmod._sink = None
        assert lines == [
            "W store: stored onboarding data unusable (command signer key malformed); "
            "onboarding again"
        ]


def test_certificate_without_readable_validity_is_unusable():
    fresh()
    plain = b"\x30\x43\x04\x41" + PUB  # DER and the key, but no X.509 validity to renew by
    assert store.check_answer(DEVICE_ID, PUB, plain, BROKER, TOPICS, {}) == (
        "certificate validity unreadable"
    )
    assert store.check_answer(DEVICE_ID, PUB, CERT, BROKER, TOPICS, {}) is None


def test_command_seq_is_zero_until_one_is_accepted_then_persisted_atomically():
    fresh()
    assert store.cmd_seq(D) == 0
    store.set_cmd_seq(D, 7)
    assert store.cmd_seq(D) == 7
    with open(D + "/cmd_seq.bin", "rb") as f:
        assert f.read() == b"\x00\x00\x00\x07"
    store.set_cmd_seq(D, 0xFFFFFFFF)
    assert store.cmd_seq(D) == 0xFFFFFFFF
    assert "cmd_seq.bin.tmp" not in os.listdir(D)


def test_command_seq_outlives_a_cleared_onboarding_result():
    saved()
    store.set_cmd_seq(D, 3)
    store.clear(D)
    assert store.cmd_seq(D) == 3  # the server's seq for this device goes on too


def test_command_seq_file_of_the_wrong_size_reads_as_zero_and_is_reported():
    fresh()
    with open(D + "/cmd_seq.bin", "wb") as f:
        f.write(b"\x00\x07")
    lines = capture()
    assert store.cmd_seq(D) == 0
    logmod._sink = None
    assert lines == ["W store: cmd_seq.bin unreadable; last command seq taken as 0"]


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
