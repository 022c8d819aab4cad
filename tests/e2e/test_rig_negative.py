"""(b) Negative variants end to end, on emulated boards through the rig: a host name the server's
certificate does not name (HTTPS onboarding and MQTT), and a revoked client certificate. Each
fails closed: no onboarding, no MQTT session, no telemetry accepted. A revoked device cannot
tell a refused handshake from a network fault (the broker just closes the TLS session), so it
retries with its bounded backoff, at most once a minute. (Pinning the wrong CA is
test_board_e2e.py.)

"127.1" is the inet_aton shorthand of 127.0.0.1: it reaches the same listener without touching
/etc/hosts, but it is neither the DNS name "localhost" nor the IP address 127.0.0.1 that the
server and broker certificates name, so the host name check (RFC 6125) must refuse it."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil import scenarios
from hil.emulated import EmulatedBoard
from hil.serverproc import ServerProcess
from hil.targets import EmulatedTarget

pytestmark = pytest.mark.e2e

OTHER_NAME = "127.1"
LINK_FAILED = r"W agent: link failed \((\d+) in a row\): (.*); retry in \d+ ms"


class Boards:
    def __init__(self, root: Path, server: ServerProcess) -> None:
        self.root, self.server = root, server
        self.made: list[EmulatedBoard] = []

    def new(self, name: str, server_url: str | None = None) -> tuple[EmulatedBoard, str]:
        b = EmulatedBoard(self.root, name)
        self.made.append(b)
        b.flash(
            {
                "server": server_url or self.server.api_url,
                "root_ca": "ca.der",
                "telemetry_interval_ms": 300,
            },
            self.server.root_der(),
        )
        ident = b.enrol()
        csv = self.root / f"{name}.csv"
        csv.write_text(f"{ident['device_id']},{ident['public_key']}\n")
        self.server.cli("batch", "import", "neg", str(csv))
        return b, ident["device_id"]

    def state(self, device_id: str) -> str:
        with sqlite3.connect(self.server.data_dir / "registry.sqlite") as db:
            row = db.execute(
                "SELECT state FROM devices WHERE device_id = ?", (device_id,)
            ).fetchone()
        return str(row[0])


@pytest.fixture(scope="module")
def boards(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Boards]:
    server.cli("batch", "create", "neg")
    b = Boards(tmp_path_factory.mktemp("neg"), server)
    yield b
    for board in b.made:
        board.close()


def _tls_refusal(board: EmulatedBoard, host: str) -> str:
    m = board.wait_for(LINK_FAILED, timeout=120)
    why = m.group(2)
    assert why.startswith(f"tls {host}:"), why
    # The TCP connection was made: mbedTLS's host name check refused the certificate.
    assert why.endswith("The certificate Common Name (CN) does not match with the expected CN"), why
    return why


def test_b_server_name_mismatch_fails_closed_before_onboarding(
    boards: Boards, server: ServerProcess
) -> None:
    port = int(server.api_url.rsplit(":", 1)[1].split("/")[0])
    board, device_id = boards.new("wrong-name", f"https://{OTHER_NAME}:{port}")
    board.power_on()
    why = _tls_refusal(board, OTHER_NAME)
    board.wait_for(r"W agent: link failed \(2 in a row\)", timeout=30)  # keeps refusing
    assert not any(" onboard: certificate stored" in ln for ln in board.lines())
    assert not (board.fs / "data" / "cert.der").exists()
    assert boards.state(device_id) == "registered", why
    board.power_off()


def test_b_broker_name_mismatch_fails_closed_no_telemetry_accepted(
    boards: Boards, server: ServerProcess
) -> None:
    board, device_id = boards.new("wrong-broker-name")
    board.power_on()
    board.wait_for(r"published seq=1\b", timeout=180)
    port = json.loads((board.fs / "data" / "onboard.json").read_text())["broker"]["port"]
    scenarios.redirect_broker(EmulatedTarget(board), OTHER_NAME, int(port))
    tap = scenarios.TelemetryTap(server.data_dir, device_id)
    try:
        board.power_cycle()
        _tls_refusal(board, OTHER_NAME)
        board.wait_for(r"W agent: link failed \(2 in a row\)", timeout=30)
        assert not any(" mqtt: connected" in ln for ln in board.lines())
        assert tap.telemetry() == []
    finally:
        tap.close()
        board.power_off()


def test_b_revoked_client_certificate_is_refused_live_and_after_a_power_cycle(
    boards: Boards, server: ServerProcess
) -> None:
    board, device_id = boards.new("revoked")
    board.power_on()
    board.wait_for(r"published seq=3\b", timeout=180)

    tap = scenarios.TelemetryTap(server.data_dir, device_id)
    try:
        tap.wait_seq(4, timeout=30)
        out = server.cli("device", "revoke", device_id)
        assert out.returncode == 0, out.stderr
        t_revoked = time.monotonic()
        assert boards.state(device_id) == "revoked"
        # The broker drops the live session at once ...
        m = board.wait_for(r"W agent: link failed \(1 in a row\): (.*); retry", timeout=30)
        assert m.group(1).startswith("mqtt: "), m.group(0)
        # ... and refuses the revoked certificate in the TLS handshake from then on, after a
        # power cycle too: the agent keeps retrying with its bounded backoff, never connected.
        board.wait_for(r"W agent: link failed \(2 in a row\): tls ", timeout=30)
        board.power_cycle()
        m = board.wait_for(r"W agent: link failed \(2 in a row\): (.*); retry", timeout=60)
        assert m.group(1).startswith("tls localhost:"), m.group(0)
        assert not any("I mqtt: connected" in ln for ln in board.lines())  # this power cycle
        # Nothing of the device reached the broker's subscribers after the revocation.
        late = [msg.data["seq"] for msg in tap.telemetry() if msg.t > t_revoked + 1.0]
        assert late == [], f"the broker forwarded the revoked device's telemetry: {late}"
        assert boards.state(device_id) == "revoked"
    finally:
        tap.close()
        board.power_off()
