"""Several API workers on the embedded SQLite registry: concurrent devices from many
connections all onboard, each exactly once, with one certificate and one audit event each."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509

from hil.serverproc import ServerProcess
from hil.simdevice import SimDevice

pytestmark = pytest.mark.e2e

DEVICES = 48


def test_two_workers_on_sqlite_onboard_a_concurrent_fleet(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, extra_args=["--workers", "2"]).start()
    try:
        assert len(server.worker_pids()) == 2, server.log_tail()
        root = server.root_der()
        devices = [SimDevice(server.api_url, root) for _ in range(DEVICES)]
        csv = tmp_path / "fleet.csv"
        csv.write_text("\n".join(d.csv_line() for d in devices) + "\n")
        server.cli("batch", "create", "w")
        server.cli("batch", "import", "w", str(csv))
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda d: d.onboard(), devices))
        assert [a.status for a in answers] == [200] * DEVICES, [a.body for a in answers]
        serials = {
            x509.load_der_x509_certificate(
                base64.b64decode(a.body["certificate_b64"])
            ).serial_number
            for a in answers
        }
        assert len(serials) == DEVICES
        rows = server.query("SELECT state, COUNT(*) FROM devices GROUP BY state")
        assert rows == [("onboarded", DEVICES)]
        events = server.query("SELECT COUNT(*) FROM audit WHERE action = 'device.onboard'")
        assert events == [(DEVICES,)]
    finally:
        assert server.stop() in (0, -15), server.log_tail()
