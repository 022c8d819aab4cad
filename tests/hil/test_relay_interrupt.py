"""A board interrupted with Ctrl-C ends at its REPL and says KeyboardInterrupt, even when the
Unix port process dies of the SIGINT instead of catching it (it can, when the signal lands
outside its handler, or inside its garbage collector) or hangs on it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial

from hil import ptyrelay

# A stand-in board process: with main it prints a line every 0.2 s and dies of SIGINT (default
# action, as the Unix port at a bad moment); with "hang" it stops silent inside the handler (as
# one whose collector lock the signal left held); with "handle" it prints that it caught the
# interrupt and runs on printing, as a program that catches KeyboardInterrupt may; boot-only,
# it shows a prompt and echoes a line.
_BOARD = r"""
import os, signal, sys, time
mode = sys.argv[1]
def caught(*_):
    os.write(1, b"interrupt caught, running on\r\n")
handlers = {"hang": lambda *_: time.sleep(3600), "handle": caught}
signal.signal(signal.SIGINT, handlers.get(mode, signal.SIG_DFL))
if mode != "boot":
    while True:
        os.write(1, b"I agent: running\r\n")
        time.sleep(0.2)
os.write(1, b">>> ")
line = b""
while not line.endswith(b"\r"):
    line += os.read(0, 100)
os.write(1, b"got " + line.strip() + b"\r\n>>> ")
time.sleep(30)
"""


def _relay(tmp_path: Path, fate: str, causes: list[str]) -> ptyrelay.PtyRelay:
    """A relay over the stand-in in mode `fate` (boot-only after an interrupt); `causes`
    collects each start's cause."""

    def spawn(slave: int, cause: str) -> subprocess.Popen[bytes]:
        causes.append(cause)
        mode = "boot" if cause == ptyrelay.INTERRUPTED else fate
        return subprocess.Popen(
            [sys.executable, "-c", _BOARD, mode],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )

    return ptyrelay.PtyRelay(spawn, tmp_path / "console.log", "fake")


@pytest.mark.parametrize("fate", ["main", "hang"], ids=["dies of it", "hangs on it"])
def test_ctrl_c_that_kills_or_hangs_the_process_still_ends_at_the_repl(
    tmp_path: Path, fate: str
) -> None:
    causes: list[str] = []
    relay = _relay(tmp_path, fate, causes)
    try:
        relay.power_on()
        with serial.Serial(relay.port, 115200, timeout=0.2) as ser:
            got = b""
            deadline = time.monotonic() + 20
            while b"I agent: running" not in got and time.monotonic() < deadline:
                got += ser.read(256)
            ser.write(b"\x03")
            ser.write(b"hello\r")  # typed on: held until the prompt, as on a board
            got = b""
            deadline = time.monotonic() + 20
            while b"got hello" not in got and time.monotonic() < deadline:
                got += ser.read(256)
        assert b"got hello\r\n>>> " in got, got[-200:]
        assert b"KeyboardInterrupt: \r\n>>> got hello" in got  # what a board prints, then the REPL
        assert "KeyboardInterrupt: " in relay.lines()
        # Back at the REPL without main.py: the agent never ran again after the Ctrl-C.
        assert causes == [ptyrelay.POWER_ON, ptyrelay.INTERRUPTED]
        assert b"I agent: running" not in got.split(b">>> ", 1)[-1]
    finally:
        relay.close()


def test_a_program_that_handles_the_interrupt_and_runs_on_is_left_running(tmp_path: Path) -> None:
    causes: list[str] = []
    relay = _relay(tmp_path, "handle", causes)
    try:
        relay.power_on()
        assert relay.wait_for("I agent: running", 20)
        pid = relay.pid
        with serial.Serial(relay.port, 115200, timeout=0.2) as ser:
            ser.write(b"\x03")
            assert relay.wait_for("caught, running on", 20)
            time.sleep(ptyrelay._INTERRUPT_GRACE_S + 2)  # past the hang cut-off
        assert relay.running and relay.pid == pid and causes == [ptyrelay.POWER_ON]
        assert relay.lines()[-1] == "I agent: running"
    finally:
        relay.close()
