"""(e) Clock skew on an emulated board: its RTC (boards/unix/board.py, beside the die) at
2000-01-01 and 10 years ahead. The agent refuses to open TLS while the time is implausible and
says so, sets the clock from the time server (hil.sntpserver) once it answers, then onboards
and publishes."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator

import pytest

from hil.emulated import EmulatedBoard
from hil.serverproc import ServerProcess
from hil.sntpserver import SntpServer

pytestmark = pytest.mark.e2e

JAN_2000 = 946684800
TEN_YEARS = 10 * 365 * 86400
REFUSED = (
    r"W agent: link failed \(1 in a row\): clock: time (\d+) implausible; not opening TLS "
    r"until it is set \(sntp: server not synchronised\)"
)
SET = r"I clock: time set from 127\.0\.0\.1:\d+: (\d+) \(was (\d+)\)"


@pytest.fixture
def sntp() -> Iterator[SntpServer]:
    with SntpServer(synchronised=False) as s:
        yield s


def _state(server: ServerProcess, device_id: str) -> str | None:
    with sqlite3.connect(server.data_dir / "registry.sqlite") as db:
        row = db.execute("SELECT state FROM devices WHERE device_id = ?", (device_id,)).fetchone()
    return None if row is None else str(row[0])


def _refuse_then_recover(board: EmulatedBoard, sntp: SntpServer, skewed: int) -> None:
    m = board.wait_for(REFUSED, timeout=120)
    assert abs(int(m.group(1)) - skewed) < 60
    # Nothing went over the network but the time query: no onboarding, no MQTT session.
    assert not any(re.search(r" onboard: hello| mqtt: connected", ln) for ln in board.lines())
    assert sntp.requests >= 1
    sntp.synchronised = True
    m = board.wait_for(SET, timeout=30)
    now = time.time()
    assert abs(int(m.group(1)) - now) < 10
    assert abs(int(m.group(2)) - skewed) < 120
    board.wait_for(r"published seq=1\b", timeout=120)
    # The agent set the board's RTC (set_rtc): it survives the next power cycle.
    assert abs(board.rtc() - time.time()) < 10


def test_e_rtc_at_2000_then_ten_years_ahead_refuses_tls_sets_time_and_recovers(
    server: ServerProcess, sntp: SntpServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server.cli("batch", "create", "clock")
    root = tmp_path_factory.mktemp("clock")
    board = EmulatedBoard(root, "skewed")
    try:
        board.flash(
            {
                "server": server.api_url,
                "root_ca": "ca.der",
                "telemetry_interval_ms": 300,
                "time_server": sntp.address,
            },
            server.root_der(),
        )
        ident = board.enrol()
        (root / "c.csv").write_text(f"{ident['device_id']},{ident['public_key']}\n")
        server.cli("batch", "import", "clock", str(root / "c.csv"))
        # A dead RTC battery: the board wakes up in 2000, before onboarding.
        board.set_rtc(JAN_2000)
        board.power_on()
        _refuse_then_recover(board, sntp, JAN_2000)
        assert _state(server, ident["device_id"]) == "onboarded"
        # Ten years ahead, with a stored certificate: the MQTT session waits for the time too.
        board.power_off()
        sntp.synchronised = False
        board.set_rtc(time.time() + TEN_YEARS)
        board.power_on()
        _refuse_then_recover(board, sntp, int(time.time()) + TEN_YEARS)
        assert not any(" onboard: hello" in ln for ln in board.lines())
    finally:
        board.close()
