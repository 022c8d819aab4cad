"""Operator actions against the running server: `qlink device disable|enable|revoke` reach the
live broker, the CRL endpoint publishes the revoked serial, and the audit log names who."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.request

import pytest
from cryptography import x509

pytestmark = pytest.mark.e2e


def _get(server, path: str) -> bytes:  # type: ignore[no-untyped-def]
    ctx = ssl.create_default_context(cafile=str(server.root_pem_path))
    with urllib.request.urlopen(server.api_url + path, context=ctx, timeout=10) as r:
        return bytes(r.read())


def test_disable_enable_revoke_through_the_cli(server, fleet) -> None:  # type: ignore[no-untyped-def]
    d = fleet.take()
    r = d.onboard()
    assert r.status == 200
    serial = x509.load_der_x509_certificate(
        base64.b64decode(r.body["certificate_b64"])
    ).serial_number

    out = server.cli("device", "disable", d.device_id)
    assert out.stdout.strip() == f"device {d.device_id}: onboarded (disabled)"
    assert d.hello().error == "not_registered"
    assert server.cli("device", "enable", d.device_id).stdout.strip().endswith(": onboarded")
    assert d.hello().status == 200

    crl = x509.load_der_x509_crl(_get(server, "/v1/ca/crl"))
    assert crl.get_revoked_certificate_by_serial_number(serial) is None
    assert server.cli("device", "revoke", d.device_id).stdout.strip().endswith(": revoked")
    crl = x509.load_der_x509_crl(_get(server, "/v1/ca/crl"))
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    assert d.hello().error == "not_registered"
    again = server.cli("device", "enable", d.device_id, check=False)
    assert again.returncode == 1 and "stays revoked" in again.stderr

    audit = json.loads(server.cli("audit", "--json", "--target", f"device:{d.device_id}").stdout)
    assert [a["action"] for a in audit] == [
        "device.revoke",
        "device.enable",
        "device.disable",
        "device.onboard",
    ]
    assert all(a["actor"].startswith("cli:") for a in audit[:3])
    assert x509.load_der_x509_certificate(
        _get(server, "/v1/ca/root")
    ) == x509.load_der_x509_certificate(server.root_der())


def test_denials_survive_a_lost_broker_file(make_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # The broker's dynamic-security file holds the denials; the server applies the registry's
    # again at every start, so losing the file does not hand a disabled device its rights back.
    from hil.simdevice import SimDevice

    proc = make_server(tmp_path / "srv").start()
    try:
        d = SimDevice(proc.api_url, proc.root_der())
        csv = tmp_path / "one.csv"
        csv.write_text(d.csv_line() + "\n")
        proc.cli("batch", "create", "b1")
        proc.cli("batch", "import", "b1", str(csv))
        assert d.onboard().status == 200
        proc.cli("device", "disable", d.device_id)
    finally:
        proc.stop()
    dynsec = proc.data_dir / "broker" / "dynamic-security.json"
    dynsec.unlink()
    proc.start()
    try:
        clients = {c["username"]: c for c in json.loads(dynsec.read_text())["clients"]}
        assert [r["rolename"] for r in clients[d.device_id]["roles"]] == ["qlink-deny"]
    finally:
        proc.stop()


def test_a_forwarded_for_header_does_not_become_the_audited_source(server, fleet) -> None:  # type: ignore[no-untyped-def]
    """No proxy stands in front of the server: the audit log keeps the connection's address."""
    from hil.simdevice import ApiResponse

    d = fleet.take()
    ctx = ssl.create_default_context(cafile=str(server.root_pem_path))
    spoof = {"Content-Type": "application/json", "X-Forwarded-For": "203.0.113.7"}

    def post(path: str, body: dict) -> ApiResponse:  # type: ignore[type-arg]
        req = urllib.request.Request(
            server.api_url + path, json.dumps(body).encode(), spoof, method="POST"
        )
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return ApiResponse(r.status, json.loads(r.read()))

    h = post("/v1/onboard/hello", {"device_id": d.device_id, "public_key": d.public_key.hex()})
    assert post("/v1/onboard/proof", d.proof_body(h)).status == 200
    rows = server.query(
        f"SELECT source FROM audit WHERE action = 'device.onboard' "
        f"AND target = 'device:{d.device_id}'"
    )
    assert rows == [("127.0.0.1",)]
