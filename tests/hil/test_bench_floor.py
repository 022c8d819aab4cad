"""The onboarding benchmark's floor server (bench/_floor.py): it must answer a real device's
hello and proof over TLS with the replayed bodies, and do the proof's crypto once per proof,
or the ratio it reports would not bound the real server's."""

from __future__ import annotations

import multiprocessing
import ssl
from pathlib import Path

import pytest

from bench._floor import FloorServer, Work, canned_answers, proof_work
from hil.serverproc import ServerProcess
from hil.simdevice import HttpsConnection, SimDevice, root_context
from host.server.ca import CertificateAuthority

HELLO = {"challenge_id": "c1", "challenge": "ab" * 32, "expires_in": 60}
PROOF = {"device_id": "x" * 64, "certificate_b64": "A" * 700}


def test_floor_answers_devices_and_works_once_per_proof(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    proofs = multiprocessing.get_context("fork").Value("i", 0)

    def context() -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(ca.cert_path("server"), ca.key_path("server"))
        return ctx

    def work() -> Work:
        def one() -> None:
            with proofs.get_lock():
                proofs.value += 1

        return proof_work(one)

    server = FloorServer(context, canned_answers(HELLO, PROOF), work, workers=2).start()
    try:
        url = f"https://localhost:{server.port}"
        for _ in range(3):
            answer = SimDevice(url, ca.root_der()).onboard()
            assert (answer.status, answer.body) == (200, PROOF)
        # A request over several TLS records (16 KiB each), then another on the same connection:
        # each framed by its Content-Length.
        with HttpsConnection("localhost", server.port, _client(ca), 10) as conn:
            assert conn.request("POST", "/v1/onboard/hello", b"{" + b" " * 40000 + b"}")[0] == 200
            status, raw = conn.request("POST", "/v1/onboard/proof", b"{}")
            assert status == 200 and raw.startswith(b'{"device_id"')
        assert proofs.value == 4
        assert len(set(server.pids())) == 2
    finally:
        server.stop()
    assert all(not p.is_alive() for p in server.procs)


def _client(ca: CertificateAuthority) -> ssl.SSLContext:
    return root_context(ca.root_der())


def test_the_floor_with_the_store_keeps_what_the_server_keeps(tmp_path: Path) -> None:
    """bench/onboarding.py's floor with the store: each device gets a challenge of its own,
    and its proof leaves the records a real onboarding leaves (the device onboarded with a
    certificate, the challenge used, an audit event), in the floor's own registry."""
    from bench.onboarding import floor_registry, register, start_floor

    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    registry = floor_registry(tmp_path / "floor-store")
    server = start_floor(tmp_path, canned_answers(HELLO, PROOF), 2, registry)
    try:
        url = f"https://localhost:{server.port}"
        devices = [SimDevice(url, ca.root_der()) for _ in range(3)]
        register(registry, devices)
        for d in devices:
            answer = d.onboard()
            assert (answer.status, answer.body) == (200, PROOF)
        stranger = SimDevice(url, ca.root_der()).onboard
        with pytest.raises(OSError):  # not in the registry: the floor breaks the connection
            stranger()
    finally:
        server.stop()
    _assert_onboarded(registry, devices)


def test_the_floor_with_the_servers_logic_onboards_as_the_server_does(
    tmp_path: Path, qlink_server: ServerProcess
) -> None:
    """bench/onboarding.py's floor with the server's logic: the answers are the server's own
    (a challenge per device, the device's certificate from the server's CA, its broker), the
    records and the log lines are the server's, and a device the logic refuses gets nothing."""
    import base64

    from cryptography import x509

    from bench.onboarding import Broker, floor_registry, register, start_floor

    registry = floor_registry(tmp_path / "floor-app")
    broker = Broker(qlink_server.broker_port, int(qlink_server.info["broker_admin_port"]))
    server = start_floor(qlink_server.data_dir, canned_answers(HELLO, PROOF), 2, registry, broker)
    root = x509.load_der_x509_certificate(qlink_server.root_der())
    try:
        url = f"https://localhost:{server.port}"
        devices = [SimDevice(url, qlink_server.root_der()) for _ in range(3)]
        register(registry, devices)
        serials = set()
        for d in devices:
            answer = d.onboard()
            assert answer.status == 200 and answer.body["device_id"] == d.device_id
            assert answer.body["broker"]["port"] == qlink_server.broker_port
            cert = x509.load_der_x509_certificate(base64.b64decode(answer.body["certificate_b64"]))
            issuing = x509.load_der_x509_certificate(base64.b64decode(answer.body["chain_b64"][0]))
            cert.verify_directly_issued_by(issuing)
            issuing.verify_directly_issued_by(root)
            serials.add(cert.serial_number)
        assert len(serials) == 3
        stranger = SimDevice(url, qlink_server.root_der()).onboard
        with pytest.raises(OSError):  # refused by the logic: the floor breaks the connection
            stranger()
    finally:
        server.stop()
    _assert_onboarded(registry, devices)
    logged = (registry.parent / "floor-app.log").read_text()
    assert logged.count("event=proof") == 3 and logged.count("outcome=ok") == 6
    assert "outcome=not_registered" in logged


def _assert_onboarded(registry: Path, devices: list[SimDevice]) -> None:
    """The records a real onboarding leaves, for each of `devices`: onboarded with a
    certificate, its challenge used, an audit event."""
    from host.server.store import Store

    store = Store(registry)
    try:
        for d in devices:
            dev = store.devices.get(d.device_id)
            assert dev is not None and dev.state == "onboarded" and dev.cert_der
        used = store.db.all("SELECT used_proof FROM devices WHERE used_challenge IS NOT NULL")
        assert len(used) == len(devices) and all(r["used_proof"] for r in used)
        events = store.db.all("SELECT action FROM audit WHERE action = 'device.onboard'")
        assert len(events) == len(devices)
    finally:
        store.close()
