"""`kill -9` of the server where it hurts most, landed exactly there by a hold point
(host/server/holds.py): inside the proof's write transaction, and with a broker registration
in flight (AWS IoT, through moto's server, whose state outlives the killed server). Each case
says what is left, and that the device's retry onboards it after a restart."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from attacksuite import Attack

from hil.serverproc import ServerProcess
from hil.simdevice import SimDevice


def _held(marker: Path, proc: ServerProcess, timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        assert time.monotonic() < deadline, proc.log_tail()
        time.sleep(0.02)
    return marker.read_text().split()[1]


def _onboard_in_background(device: SimDevice) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(device.onboard().status)
        except Exception as e:
            outcome.append(type(e).__name__)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, outcome


def _register(proc: ServerProcess, batch: str, policy: str, device: SimDevice) -> None:
    csv = proc.data_dir / f"{batch}.csv"
    csv.write_text(device.csv_line() + "\n")
    proc.ensure_tenant("acme")
    proc.cli("batch", "create", batch, "--tenant", "acme", "--policy", policy)
    proc.cli("batch", "import", batch, str(csv))


def test_kill_inside_the_onboarding_transaction(attack: Attack, tmp_path: Path) -> None:
    attack.expect(
        "kill -9 inside the proof's write transaction",
        "nothing of the onboarding is left (device registered, no certificate, challenge "
        "unused, no audit event); the device's retry onboards it after a restart",
    )
    marker = tmp_path / "held"
    hold = {"QLINK_HOLD": "onboard_transaction", "QLINK_HOLD_FILE": str(marker)}
    proc = ServerProcess(tmp_path / "data", env=hold).start()
    device = SimDevice(proc.api_url, proc.root_der(), timeout_s=30)
    _register(proc, "held", "mosquitto", device)
    thread, outcome = _onboard_in_background(device)
    point = _held(marker, proc)
    status = proc.kill()
    thread.join(10)
    row = proc.query(
        f"SELECT state, cert_der IS NULL FROM devices WHERE device_id = '{device.device_id}'"
    )[0]
    used = proc.query("SELECT COUNT(*) FROM devices WHERE used_challenge IS NOT NULL")[0][0]
    events = proc.query("SELECT COUNT(*) FROM audit WHERE action = 'device.onboard'")[0][0]
    again = ServerProcess(tmp_path / "data").start()
    try:
        device.api_url = again.api_url
        retry = device.onboard()
        device.mqtt_connect(retry).disconnect()
    finally:
        again.stop()
    attack.observe(
        f"killed at {point} (status {status}); device {row[0]}, certificate "
        f"{'none' if row[1] else 'stored'}, {used} used challenges, {events} onboard events; "
        f"the device saw {outcome[0] if outcome else 'nothing'}; retry after restart: "
        f"HTTP {retry.status}, broker accepts it"
    )
    assert point == "onboard_transaction"
    assert (row[0], bool(row[1]), used, events) == ("registered", True, 0, 0)
    assert retry.status == 200


@pytest.fixture
def moto_iot() -> Iterator[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # moto's note that moto[server] has more extras
        from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def test_kill_with_an_aws_registration_in_flight(
    attack: Attack, tmp_path: Path, moto_iot: str
) -> None:
    attack.expect(
        "kill -9 with an AWS IoT registration in flight",
        "the registry is untouched and the half-made registration grants nothing (no policy, "
        "no thing attached); the device's retry onboards it after a restart",
    )
    aws = {
        "AWS_ENDPOINT_URL": moto_iot,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "QLINK_AWS_REGION": "us-east-1",
    }
    marker = tmp_path / "held"
    hold = {"QLINK_HOLD": "aws_registration", "QLINK_HOLD_FILE": str(marker)}
    proc = ServerProcess(tmp_path / "data", env={**aws, **hold}).start()
    device = SimDevice(proc.api_url, proc.root_der(), timeout_s=30)
    _register(proc, "cloud", "aws", device)
    thread, outcome = _onboard_in_background(device)
    point = _held(marker, proc)
    proc.kill()
    thread.join(10)
    iot = boto3.client(
        "iot",
        region_name="us-east-1",
        endpoint_url=moto_iot,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    certs = iot.list_certificates()["certificates"]
    orphan = certs[0]["certificateArn"] if certs else None
    attached = iot.list_attached_policies(target=orphan)["policies"] if orphan else []
    principals = iot.list_thing_principals(thingName=device.device_id)["principals"]
    row = proc.query(f"SELECT state FROM devices WHERE device_id = '{device.device_id}'")[0]
    again = ServerProcess(tmp_path / "data", env=aws).start()
    try:
        device.api_url = again.api_url
        retry = device.onboard()
    finally:
        again.stop()
    after = iot.list_thing_principals(thingName=device.device_id)["principals"]
    attack.observe(
        f"killed at {point}; registry: device {row[0]}; AWS: {len(certs)} certificate(s), "
        f"{len(attached)} policies on it, {len(principals)} attached to the thing; the "
        f"device saw {outcome[0] if outcome else 'nothing'}; retry after restart: HTTP "
        f"{retry.status}, {len(after)} certificate on the thing"
    )
    assert point == "aws_registration"
    assert row[0] == "registered"
    assert attached == [] and principals == []
    assert retry.status == 200
    assert len(after) == 1 and after[0] != orphan
