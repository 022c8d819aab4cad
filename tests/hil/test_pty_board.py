"""The emulated board's serial port speaks what a USB board's does: real mpremote and pyserial
drive it (raw REPL, raw-paste, soft reset, Ctrl-C into a running main.py), power is a process."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from hil import build
from hil.emulated import EmulatedBoard
from hil.strategy import Strategy
from hil.targets import EmulatedTarget, SerialTarget, TargetError, mpremote_exe

# A config whose server nobody listens on: the agent retries forever, so main.py keeps running.
_CONFIG = {"server": "https://localhost:9", "root_ca": "ca.der", "telemetry_interval_ms": 300}


def _fake_ca() -> bytes:
    return bytes.fromhex("3003020100")  # one DER SEQUENCE: passes the agent's shape check


@pytest.fixture
def board(tmp_path: Path) -> Iterator[EmulatedBoard]:
    b = EmulatedBoard(tmp_path, "pty-board")
    b.flash(_CONFIG, _fake_ca())
    yield b
    b.close()


def mpremote(port: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [mpremote_exe(), "connect", port, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_mpremote_exec_interrupts_the_running_agent_and_runs_code(board: EmulatedBoard) -> None:
    board.power_on()
    board.wait_for(r"W agent: link failed \(1 in a row\)", timeout=60)
    assert board.port.startswith("/dev/pts/")
    r = mpremote(board.port, "exec", "print(sum(range(10)), 'on', __import__('sys').platform)")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "45 on linux\n"
    # mpremote soft-resets first (boot.py only, main.py skipped: a board's raw REPL does that).
    assert "MPY: soft reboot" in board.lines()


def test_mpremote_fs_cp_ls_cat_and_sha256_roundtrip(board: EmulatedBoard, tmp_path: Path) -> None:
    board.power_on()
    payload = bytes(range(256)) * 40  # binary, 10 KiB: several raw-paste windows
    src = tmp_path / "blob.bin"
    src.write_bytes(payload)
    r = mpremote(board.port, "fs", "cp", str(src), ":blob.bin", "+", "fs", "ls")
    assert r.returncode == 0, r.stderr
    assert "blob.bin" in r.stdout and "config.json" in r.stdout
    assert (board.fs / "blob.bin").read_bytes() == payload
    r = mpremote(board.port, "fs", "sha256sum", ":blob.bin")
    assert hashlib.sha256(payload).hexdigest() in r.stdout
    back = tmp_path / "back.bin"
    r = mpremote(board.port, "fs", "cp", ":blob.bin", str(back))
    assert r.returncode == 0, r.stderr
    assert back.read_bytes() == payload


def test_mpremote_run_and_soft_reset(board: EmulatedBoard, tmp_path: Path) -> None:
    board.power_on()
    script = tmp_path / "hello.py"
    script.write_text("import os\nprint('files', len(os.listdir()))\n")
    r = mpremote(board.port, "run", str(script))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("files ")
    boots = board.relay.boots
    r = mpremote(board.port, "soft-reset")
    assert r.returncode == 0, r.stderr
    assert board.relay.boots == boots + 1  # a new process, same port


def test_exec_error_comes_back_as_an_error(board: EmulatedBoard) -> None:
    board.power_on()
    r = mpremote(board.port, "exec", "raise ValueError('bad thing')")
    assert r.returncode == 1
    assert "ValueError: bad thing" in r.stdout + r.stderr


def test_pyserial_sees_the_friendly_repl_after_ctrl_c(board: EmulatedBoard) -> None:
    board.power_on()
    board.wait_for(r"I agent: device", timeout=60)
    with serial.Serial(board.port, 115200, timeout=0.2) as ser:
        ser.write(b"\x03")
        got = b""
        for _ in range(300):
            got += ser.read(256)
            if got.endswith(b">>> "):
                break
        assert got.endswith(b">>> "), got[-200:]
        ser.write(b"6*7\r")
        got = b""
        for _ in range(50):
            got += ser.read(256)
            if b"42" in got:
                break
        assert b"6*7\r\n42\n>>> " in got  # the Unix port ends program output with LF only
    assert any("KeyboardInterrupt" in ln for ln in board.lines()), "\n".join(board.lines()[-25:])


def test_power_off_is_a_power_cut_and_power_on_boots_cold(board: EmulatedBoard) -> None:
    board.power_on()
    board.wait_for(r"I agent: device ([0-9a-f]{64})", timeout=60)
    pid = board.relay.pid
    board.power_off()
    assert not board.running
    board.power_on()
    m = board.wait_for(r"I agent: device ([0-9a-f]{64})", timeout=60)
    assert board.relay.pid != pid
    assert m.group(1) in "\n".join(board.lines())


def test_serial_target_deploys_verifies_and_reads_back(tmp_path: Path) -> None:
    # The path a USB board takes (mpremote over a serial port), against the emulated board's pty.
    b = EmulatedBoard(tmp_path, "usb-like")
    try:
        t = EmulatedTarget(b)
        s = Strategy(t, dict(_CONFIG), _fake_ca())
        s.transition("app_deployed")
        digests = t.serial.sha256(["agent/main.mpy", "board.py", "config.json", "missing.txt"])
        image = build.sha256_of(build.build("unix", tmp_path / "img"))
        assert digests["agent/main.mpy"] == image["agent/main.mpy"]
        assert digests["board.py"] == image["board.py"]
        assert digests["missing.txt"] == "-"
        assert "agent" in t.ls() and "main.mpy" in t.ls("agent")
        s.transition("agent_running")
        assert s.state == "agent_running"
    finally:
        b.close()


def test_serial_target_on_a_port_with_no_board_says_so() -> None:
    with pytest.raises(TargetError, match="mpremote on /dev/nonexistent failed"):
        SerialTarget("/dev/nonexistent").exec("print(1)", timeout=20)


def test_unknown_board_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(build.BuildError, match=r"unknown board 'esp8266'; boards: esp32, rp2040"):
        build.build("esp8266", tmp_path / "x")


@pytest.mark.parametrize("board_name", ["rp2040", "esp32"])
def test_build_compiles_every_module_for_the_board(tmp_path: Path, board_name: str) -> None:
    files = build.build(board_name, tmp_path / board_name)
    # .mpy v6 header; bytecode-only files carry no arch (it is set for native code only).
    assert files["agent/main.mpy"].read_bytes()[:2] == b"M\x06"
    assert "board.py" in files and "silicon.py" not in files
    n = len(list((build.unixport.FIRMWARE / "agent").glob("*.py")))
    assert len([f for f in files if f.startswith("agent/")]) == n
    assert "board.py" in files and "silicon.py" not in files
