"""Against the real server process: a schemathesis run over its OpenAPI schema (no 5xx, every
answer as documented), and `kill -9` in the middle of onboarding (no half-registered device,
no orphan broker, every device's retry succeeds)."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from hil.serverproc import ServerProcess
from hil.simdevice import SimDevice, stop_client

pytestmark = pytest.mark.e2e

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_schemathesis_finds_no_5xx_and_no_schema_violation(server: ServerProcess) -> None:
    server.ensure_tenant("fuzz")
    token = server.cli("token", "create", "fuzz", "--role", "admin", "--tenant", "fuzz").stdout
    headers = {"Authorization": f"Bearer {token.strip()}"}
    schema = schemathesis.openapi.from_url(
        server.api_url + "/openapi.json", verify=str(server.root_pem_path)
    )
    failures: list[str] = []
    calls = [0]
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(
            max_examples=12, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        @given(operation.as_strategy())
        def run(case: schemathesis.Case) -> None:
            calls[0] += 1
            response = case.call(
                base_url=server.api_url,
                headers=headers,
                verify=str(server.root_pem_path),
                timeout=10,
            )
            try:
                case.validate_response(response, checks=CHECKS)
            except Exception as e:  # collect every failure, then report them all
                failures.append(f"{case.operation.label}: {str(e)[:400]}")

        run()
    assert calls[0] > 100
    assert failures == []
    assert "event=internal_error" not in server.log_path.read_text()


def _db_rows(proc: ServerProcess) -> dict[str, tuple[str, bool]]:
    return {
        row[0]: (row[1], row[2] is not None)
        for row in proc.query("SELECT device_id, state, cert_der FROM devices")
    }


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_kill_9_mid_onboarding_leaves_no_half_registered_device(
    tmp_path: Path, make_server: Any
) -> None:
    proc = make_server(tmp_path).start()
    root = proc.root_der()
    devices = [SimDevice(proc.api_url, root, timeout_s=5) for _ in range(24)]
    csv = tmp_path / "ids.csv"
    csv.write_text("\n".join(d.csv_line() for d in devices))
    proc.ensure_tenant("acme")
    proc.cli("batch", "create", "k9", "--tenant", "acme")
    proc.cli("batch", "import", "k9", str(csv))
    broker_port = proc.broker_port
    outcomes: dict[str, str] = {}
    go = threading.Event()

    def onboard(d: SimDevice) -> None:
        go.wait()
        try:
            r = d.onboard()
            outcomes[d.device_id] = "ok" if r.status == 200 else f"http {r.status}"
        except Exception as e:
            outcomes[d.device_id] = type(e).__name__

    threads = [threading.Thread(target=onboard, args=(d,)) for d in devices]
    for t in threads:
        t.start()
    go.set()
    # Kill as soon as a few onboardings finished: the others are in flight at that moment.
    deadline = time.monotonic() + 30
    while len(outcomes) < 3 and time.monotonic() < deadline:
        time.sleep(0.002)
    # Every API process at once (with several workers, a worker that outlived its main process
    # would finish its requests gracefully); the broker is left to die with its parent.
    workers = proc.worker_pids()
    os.kill(proc.info["pid"], signal.SIGKILL)
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    for t in threads:
        t.join(30)
    assert proc._proc is not None and proc._proc.wait(10) == -signal.SIGKILL
    proc._proc = None
    # The broker died with its server (parent-death signal), not left listening.
    deadline = time.monotonic() + 10
    while _port_open(broker_port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _port_open(broker_port)
    failed = [i for i, o in outcomes.items() if o != "ok"]
    assert failed, f"the kill came too late to cut any onboarding: {outcomes}"
    # No device is half-registered: onboarded always with its certificate, else untouched.
    rows = _db_rows(proc)
    for device_id, (state, has_cert) in rows.items():
        assert (state, has_cert) in (("registered", False), ("onboarded", True)), device_id
    for device_id, outcome in outcomes.items():
        if outcome == "ok":
            assert rows[device_id] == ("onboarded", True)
    # After a restart every device's retry succeeds, on a broker that knows it.
    proc2 = make_server(tmp_path, database_url=proc.database_url).start()
    try:
        for d in devices:
            d.api_url = proc2.api_url
            r = d.onboard()
            assert r.status == 200, r.body
        client = devices[0].mqtt_connect(devices[0].onboard(), tmp_path)
        stop_client(client)
        assert set(_db_rows(proc2).values()) == {("onboarded", True)}
    finally:
        proc2.stop()
