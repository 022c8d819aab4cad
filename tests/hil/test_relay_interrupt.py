"""A board interrupted with Ctrl-C ends at its REPL, even when the Unix port process dies of
the SIGINT instead of catching it (it can, when the signal lands outside its handler)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import serial

from hil import ptyrelay

# A stand-in board process: with main it prints a line a second and dies of SIGINT (default
# action, as the Unix port at a bad moment); boot-only, it shows a prompt and echoes a line.
_BOARD = r"""
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_DFL)
if sys.argv[1] == "main":
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


def test_ctrl_c_that_kills_the_process_still_ends_at_the_repl(tmp_path: Path) -> None:
    causes: list[str] = []

    def spawn(slave: int, cause: str) -> subprocess.Popen[bytes]:
        causes.append(cause)
        mode = "boot" if cause == ptyrelay.INTERRUPTED else "main"
        return subprocess.Popen(
            [sys.executable, "-c", _BOARD, mode],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )

    relay = ptyrelay.PtyRelay(spawn, tmp_path / "console.log", "fake")
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
        # Back at the REPL without main.py: the agent never ran again after the Ctrl-C.
        assert causes == [ptyrelay.POWER_ON, ptyrelay.INTERRUPTED]
        assert b"I agent: running" not in got.split(b">>> ", 1)[-1]
    finally:
        relay.close()
