"""The board's noise input fails while the device runs: shorted or pinned to one level, by a fault
or by someone with the board in hand. The device must notice at once (SP 800-90B continuous
health tests), stop in safe mode with one log line, publish nothing more and never crash with a
traceback. The emulated board's ADC model has the fault built in (boards/unix/board.py,
QLINK_NOISE_FAULT): the case creates the file while the agent publishes."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from attacksuite import Attack

from hil.emulated import EmulatedBoard
from hil.serverproc import ServerProcess

SAFE_MODE = (
    "E agent: safe mode: entropy unusable (EntropyError: noise source failed its health test "
    "(stuck or biased); check the board's noise input, then reset); REPL available"
)
_SEQ = re.compile(r"published seq=(\d+)")


def test_noise_input_stuck_after_boot(
    attack: Attack, server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attack.expect(
        "noise input stuck while the board publishes",
        "the board stops in safe mode at its next telemetry interval with one log line naming "
        "the noise source, publishes nothing more and prints no traceback",
    )
    fault = tmp_path / "noise-fault"
    monkeypatch.setenv("QLINK_NOISE_FAULT", str(fault))
    board = EmulatedBoard(tmp_path, "noisy")
    board.flash(
        {"server": server.api_url, "root_ca": "ca.der", "telemetry_interval_ms": 300},
        server.root_der(),
    )
    ident = board.enrol()
    csv = tmp_path / "noisy.csv"
    csv.write_text(f"{ident['device_id']},{ident['public_key']}\n")
    server.cli("batch", "create", "noise-fault")
    server.cli("batch", "import", "noise-fault", str(csv))
    try:
        board.power_on()
        board.wait_for(r"published seq=1\b", timeout=90)
        t1 = time.monotonic()
        board.wait_for(r"published seq=2\b", timeout=30)
        t0 = time.monotonic()
        interval = t0 - t1  # the server's policy sets it; the source is checked at each one
        fault.touch()  # from now on every sample the ADC gives is one code
        line = board.wait_for(r"E agent: safe mode: .*", timeout=30).group(0)
        noticed_ms = (time.monotonic() - t0) * 1000
        # Two more intervals, in which telemetry would have gone out: an absence is waited out.
        time.sleep(2 * interval)
        lines = board.lines()
        still_running = board.running
    finally:
        board.close()
    at = lines.index(line)
    before = [int(m.group(1)) for ln in lines[:at] if (m := _SEQ.search(ln))]
    after = [ln for ln in lines[at + 1 :] if _SEQ.search(ln)]
    tracebacks = [ln for ln in lines if "Traceback" in ln]
    attack.observe(
        f"safe mode {noticed_ms:.0f} ms after the fault (telemetry interval "
        f"{interval * 1000:.0f} ms), after seq {max(before)}: {line!r}; "
        f"{len(after)} publishes after it, {len(tracebacks)} tracebacks, "
        f"REPL {'still running' if still_running else 'gone'}"
    )
    assert line == SAFE_MODE
    assert after == [] and tracebacks == []
    assert still_running  # main.py returned: the REPL is there for the operator
