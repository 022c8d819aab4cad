"""Operator actions against the running server: `qlink device disable|enable|revoke` and
`qlink batch revoke` reach the live broker, the CRL endpoint publishes the revoked serial, and
the audit log names who."""

from __future__ import annotations

import base64
import json
import queue
import ssl
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509

from hil.simdevice import ApiResponse, stop_client

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


def _suback(client: mqtt.Client, topic: str) -> int:
    got: queue.Queue[int] = queue.Queue()
    client.on_subscribe = lambda _c, _u, _m, codes, _p: got.put(codes[0].value)
    client.subscribe(topic, qos=1)
    return got.get(timeout=10)


def _close_all(clients: list[mqtt.Client]) -> None:
    # A dropped client waits up to 1 s before its next reconnection: close them side by side.
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(stop_client, clients))


def _on_port(answer: ApiResponse, port: int) -> ApiResponse:
    return ApiResponse(
        answer.status, {**answer.body, "broker": {**answer.body["broker"], "port": port}}
    )


def test_denials_survive_a_restart_and_a_lost_broker_file(make_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # The broker keeps its denied set in memory and serves no device until the server has
    # filled it from the store at start: a restart, even without the broker's files, does not
    # hand a disabled device its rights back.
    from hil.simdevice import SimDevice

    proc = make_server(tmp_path / "srv").start()
    try:
        d, ok = SimDevice(proc.api_url, proc.root_der()), SimDevice(proc.api_url, proc.root_der())
        csv = tmp_path / "two.csv"
        csv.write_text(d.csv_line() + "\n" + ok.csv_line() + "\n")
        proc.cli("batch", "create", "b1")
        proc.cli("batch", "import", "b1", str(csv))
        answer, ok_answer = d.onboard(), ok.onboard()
        assert answer.status == 200 and ok_answer.status == 200
        proc.cli("device", "disable", d.device_id)
    finally:
        proc.stop()
    (proc.data_dir / "broker" / "dynamic-security.json").unlink()
    proc.start()
    clients = []
    try:
        # The restarted broker listens on a new port.
        answer, ok_answer = (_on_port(x, proc.broker_port) for x in (answer, ok_answer))
        clients = [d.mqtt_connect(answer), ok.mqtt_connect(ok_answer)]
        assert _suback(clients[0], answer.body["topics"]["cmd"]) == 0x80
        assert _suback(clients[1], ok_answer.body["topics"]["cmd"]) == 1
    finally:
        _close_all(clients)
        proc.stop()


def test_batch_revoke_drops_every_connected_device_and_keeps_them_out(server) -> None:  # type: ignore[no-untyped-def]
    from hil.fleet import Fleet

    fleet = Fleet(server, batch="bulk", tenant="acme", size=40)
    devices = [fleet.take() for _ in range(40)]
    answers = [d.onboard() for d in devices]
    assert {a.status for a in answers} == {200}
    clients: list[mqtt.Client] = []
    dropped: list[threading.Event] = []
    try:
        for d, a in zip(devices, answers, strict=True):
            client = d.mqtt_connect(a)
            clients.append(client)
            assert _suback(client, a.body["topics"]["cmd"]) == 1
            event = threading.Event()
            client.on_disconnect = lambda *_a, e=event: e.set()
            dropped.append(event)

        broker_log = server.data_dir / "broker" / "mosquitto.log"
        mark = broker_log.stat().st_size
        out = server.cli("batch", "revoke", "bulk", "--json")
        assert json.loads(out.stdout) == {
            "batch": "bulk",
            "tenant": "acme",
            "devices": 40,
            "revoked": 40,
            "already_revoked": 0,
        }
        deadline = time.monotonic() + 5
        for d, e in zip(devices, dropped, strict=True):
            assert e.wait(max(0.0, deadline - time.monotonic())), f"{d.device_id} still connected"
        # One request to the broker's plugin denied them all and dropped their connections.
        log = broker_log.read_bytes()[mark:].decode()
        assert log.count("qlink_acl: deny:") == 1 and "deny: 40 changed" in log, log
        crl = x509.load_der_x509_crl(_get(server, "/v1/ca/crl"))
        for a in answers:
            serial = x509.load_der_x509_certificate(
                base64.b64decode(a.body["certificate_b64"])
            ).serial_number
            assert crl.get_revoked_certificate_by_serial_number(serial) is not None
        # Kept out: the CRL refuses the handshake (TLS 1.3: after the client has finished it,
        # so no CONNACK comes); were it not re-read yet, the plugin's set refuses every request.
        for d, a in list(zip(devices, answers, strict=True))[:2]:
            d.timeout_s = 2.0
            try:
                again = d.mqtt_connect(a)
            except (ConnectionError, OSError):
                continue
            clients.append(again)
            assert _suback(again, a.body["topics"]["cmd"]) == 0x80
        assert d.hello().error == "not_registered"

        again = server.cli("batch", "revoke", "bulk")
        assert "0 device(s) revoked, 40 revoked before, 40 in all" in again.stdout
        audit = json.loads(server.cli("audit", "--json", "--action", "device.revoke").stdout)
        ids = {f"device:{d.device_id}" for d in devices}
        assert sorted(a["target"] for a in audit if a["target"] in ids) == sorted(ids)
    finally:
        _close_all(clients)


def test_batch_revoke_of_an_unknown_batch_says_so(server) -> None:  # type: ignore[no-untyped-def]
    out = server.cli("batch", "revoke", "no-such-batch", check=False)
    assert out.returncode == 1
    assert "batch 'no-such-batch' does not exist; see: qlink batch list" in out.stderr


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
