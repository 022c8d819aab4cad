"""Onboarding against the real server subprocess: real TLS with a pinned root, real managed
Mosquitto. One test per rule; every refusal leaves the registry (devices, batches) unchanged."""

from __future__ import annotations

import base64
import json
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from hil.simdevice import ApiResponse, SimDevice, publish, stop_client

pytestmark = pytest.mark.e2e


def refused(r: ApiResponse, status: int, code: str) -> None:
    assert (r.status, r.error) == (status, code), r.body
    assert set(r.body) == {"error", "detail"}


def state_of(fleet, device: SimDevice) -> str:
    rows = {row[0]: row for row in fleet.dump()["devices"]}
    return rows[device.device_id][3]


def test_happy_path_certificate_topic_and_telemetry(server, fleet) -> None:
    d = fleet.take()
    r = d.onboard()
    assert r.status == 200, r.body
    leaf = x509.load_der_x509_certificate(base64.b64decode(r.body["certificate_b64"]))
    issuing = x509.load_der_x509_certificate(base64.b64decode(r.body["chain_b64"][0]))
    root = x509.load_der_x509_certificate(server.root_der())
    leaf.verify_directly_issued_by(issuing)
    issuing.verify_directly_issued_by(root)
    assert leaf.subject.rfc4514_string() == f"OU=acme,CN={d.device_id}"  # CN, then OU = tenant
    assert leaf.public_key() == d.key.public_key()
    assert base64.b64decode(r.body["broker"]["ca_b64"]) == server.root_der()
    assert r.body["broker"]["port"] == server.broker_port
    topic = r.body["topics"]["telemetry"]
    assert topic == f"qlink/acme/{d.device_id}/telemetry"

    client = d.mqtt_connect(r)
    try:
        publish(client, topic, {"seq": 7, "uptime_ms": 1234, "mem_free": 50000, "fw": "0.1.0"})
        # The server stores telemetry from its own subscription; wait for it, bounded.
        deadline = time.monotonic() + 10
        while True:
            proc = server.cli("devices", "--json")
            row = next(x for x in json.loads(proc.stdout) if x["device_id"] == d.device_id)
            if row["last_telemetry"] is not None or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        stop_client(client)
    assert row["state"] == "onboarded"
    assert row["last_telemetry"] == {"seq": 7, "uptime_ms": 1234, "mem_free": 50000, "fw": "0.1.0"}
    assert row["last_seen"] is not None
    table = server.cli("devices").stdout
    assert "onboarded" in table and d.device_id[:12] in table


def test_unregistered_device_is_refused(fleet) -> None:
    before = fleet.dump()
    refused(fleet.stranger().hello(), 403, "not_registered")
    assert fleet.dump() == before


def test_bad_signature_is_refused(fleet) -> None:
    d = fleet.take()
    h = d.hello()
    before = fleet.dump()
    refused(d.proof(d.proof_body(h, sign_host="attacker.example")), 403, "bad_signature")
    assert fleet.dump() == before
    assert state_of(fleet, d) == "registered"


def test_replayed_challenge_is_refused_and_same_proof_is_a_retry(fleet) -> None:
    d = fleet.take()
    h = d.hello()
    body = d.proof_body(h)
    first = d.proof(body)
    assert first.status == 200
    before = fleet.dump()
    again = d.proof(body)  # the answer was lost: the very same proof again
    assert again.status == 200 and again.body == first.body
    refused(d.proof(d.proof_body(h)), 403, "challenge_used")  # a new proof, a used challenge
    assert fleet.dump() == before


def test_expired_challenge_is_refused(short_ttl_fleet) -> None:
    fleet = short_ttl_fleet
    d = fleet.take()
    h = d.hello()
    assert h.status == 200
    assert h.body["expires"] - time.time() <= 3
    # The server accepts a proof while now <= expires; wait until that has passed.
    time.sleep(max(0.0, h.body["expires"] - time.time()) + 0.2)
    before = fleet.dump()
    refused(d.proof(d.proof_body(h)), 403, "challenge_expired")
    assert fleet.dump() == before
    assert state_of(fleet, d) == "registered"


def test_csr_with_another_key_is_refused(fleet) -> None:
    d = fleet.take()
    h = d.hello()
    before = fleet.dump()
    other = ec.generate_private_key(ec.SECP256R1())
    refused(d.proof(d.proof_body(h, csr_key=other)), 403, "csr_key_mismatch")
    assert fleet.dump() == before


def test_csr_with_another_subject_is_refused(fleet) -> None:
    d = fleet.take()
    h = d.hello()
    before = fleet.dump()
    refused(d.proof(d.proof_body(h, csr_subject="qlink-admin")), 403, "csr_subject_mismatch")
    assert fleet.dump() == before


def test_retry_returns_same_certificate_and_no_duplicate(fleet) -> None:
    d = fleet.take()
    first = d.onboard()
    assert first.status == 200
    # Only the record of the challenge the device used changes.
    used = ("used_challenge", "used_proof")
    before = fleet.dump(leave_out=used)
    again = d.onboard()
    assert again.status == 200
    assert again.body["certificate_b64"] == first.body["certificate_b64"]
    after = fleet.dump(leave_out=used)
    assert after == before
    assert [row[0] for row in after["devices"]].count(d.device_id) == 1


def test_server_refuses_tls_without_pinned_root(server) -> None:
    import ssl
    import urllib.request

    ctx = ssl.create_default_context()  # the system trust store does not know the qlink root
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(server.api_url + "/healthz", context=ctx, timeout=5)


def test_log_has_one_line_per_request_and_no_secret(server, fleet) -> None:
    d = fleet.take()
    h = d.hello()
    body = d.proof_body(h)
    assert d.proof(body).status == 200
    log = server.log_path.read_text()
    lines = [line for line in log.splitlines() if f"device={d.device_id}" in line]
    assert [line.split("event=")[1].split()[0] for line in lines if "qlink.onboard" in line] == [
        "hello",
        "proof",
    ]
    for secret in (h.body["challenge"], body["signature"], body["csr_b64"][:40]):
        assert secret not in log
