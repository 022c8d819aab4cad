"""hil.sntpserver (RFC 4330 answers, exact bytes), the unix board's RTC (boards/unix/board.py, run
in MicroPython) and the retry-line helpers of hil.scenarios."""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path

import pytest

from hil import scenarios
from hil.emulated import EmulatedBoard
from hil.sntpserver import NTP_DELTA, SntpServer

REQUEST = b"\x23" + bytes(39) + b"ORIGINAL"  # LI 0, VN 4, mode 3; transmit timestamp ORIGINAL


def test_synchronised_answer_exact_bytes() -> None:
    s = SntpServer()
    try:
        got = s.answer(REQUEST, now=1795000000.5)
    finally:
        s.stop()
    ts = struct.pack("!II", 1795000000 + NTP_DELTA, 2**31)
    want = b"\x24\x01\x04\xec" + bytes(8) + b"LOCL" + ts + b"ORIGINAL" + ts + ts
    assert got == want


def test_unsynchronised_answer_is_the_alarm_a_client_must_not_use() -> None:
    s = SntpServer(synchronised=False)
    try:
        got = s.answer(REQUEST, now=1795000000.0)
    finally:
        s.stop()
    assert got is not None
    assert got[0] >> 6 == 3 and got[0] & 7 == 4 and got[1] == 0


@pytest.mark.parametrize("bad", [b"", REQUEST[:47], b"\x24" + REQUEST[1:], b"\x21" + REQUEST[1:]])
def test_anything_but_a_client_request_gets_no_answer(bad: bytes) -> None:
    s = SntpServer()
    try:
        assert s.answer(bad) is None
    finally:
        s.stop()


def test_answers_over_udp_and_counts_requests() -> None:
    with SntpServer() as s, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        s.offset_s = -100.0
        c.settimeout(5)
        c.sendto(REQUEST, (s.host, s.port))
        reply = c.recv(512)
        c.sendto(b"junk", (s.host, s.port))
        c.sendto(REQUEST, (s.host, s.port))
        c.recv(512)
        assert s.requests == 2
        assert s.address == f"127.0.0.1:{s.port}"
    import time

    secs = struct.unpack("!I", reply[40:44])[0] - NTP_DELTA
    assert abs(secs - (time.time() - 100)) < 3


def test_emulated_board_rtc_is_read_and_set_by_the_board_and_the_rig(tmp_path: Path) -> None:
    b = EmulatedBoard(tmp_path, "clock")
    b.flash({"server": "https://localhost:1"}, b"\x30\x03\x02\x01\x00")
    b.set_rtc(946684800)
    code = (
        "import board, time\n"
        "b = board.make()\n"
        "print('RTC', b.rtc())\n"
        "b.set_rtc(1795000000)\n"
        "print('RTC', b.rtc())\n"
    )
    out = b.run_script(code)
    vals = [int(ln.split()[1]) for ln in out.splitlines() if ln.startswith("RTC ")]
    assert abs(vals[0] - 946684800) <= 2 and abs(vals[1] - 1795000000) <= 2
    assert abs(b.rtc() - 1795000000) <= 2  # the rig reads what the board set
    b.rtc_path.unlink()
    out = b.run_script("import board, time\nprint('D', board.make().rtc() - int(time.time()))")
    assert "D 0" in out or "D -1" in out or "D 1" in out  # no file: the host's time


def test_retry_lines_and_backoff_bounds() -> None:
    lines = [
        "I agent: device ab",
        "W agent: link failed (1 in a row): tls localhost:1: errno 111; retry in 731 ms",
        "W agent: link failed (2 in a row): mqtt: write failed: 104; retry in 1999 ms",
        "W agent: link failed (x in a row): junk; retry in 5 ms",
    ]
    assert scenarios.retry_waits(lines) == [(1, 731), (2, 1999)]
    assert scenarios.backoff_bounds_ms(1) == (500, 1000)
    assert scenarios.backoff_bounds_ms(3) == (2000, 4000)
    assert scenarios.backoff_bounds_ms(7) == (30000, 60000)  # capped
    assert scenarios.backoff_bounds_ms(40) == (30000, 60000)
    assert json.loads(json.dumps(scenarios.backoff_bounds_ms(0))) == [500, 1000]
