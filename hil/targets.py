"""Targets: a USB board on a serial port, and an emulated board behind a pty.

Both reach the board the same way: mpremote (raw REPL, raw-paste) and pyserial on a serial port.
The emulated target adds what only a rig with a power switch has (Power) and reads its console
from the relay, which sees everything the board printed even while mpremote holds the port.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hil import build, steps
from hil.emulated import BoardError, EmulatedBoard

_HASH_SCRIPT = """
import hashlib, binascii
for p in %r:
    h = hashlib.sha256()
    try:
        with open(p, 'rb') as f:
            while True:
                b = f.read(512)
                if not b:
                    break
                h.update(b)
        print('H', p, binascii.hexlify(h.digest()).decode())
    except OSError:
        print('H', p, '-')
"""
_RESET = (
    "import machine, sys, time\ntime.sleep_ms(100)\n"
    "if hasattr(machine, 'reset'):\n    machine.reset()\nsys.exit(3)\n"
)
_MKDIRS = (
    "import os\nfor d in %r:\n    try:\n        os.mkdir(d)\n    except OSError:\n        pass\n"
)


class TargetError(RuntimeError):
    """A rig action on a board failed; the message says which and what the tool printed."""


class PortError(TargetError):
    """The board's serial port could not be opened (missing, held by another program, not
    permitted). `port` names it; port_problem(port) says why, as a sentence for a person."""

    def __init__(self, port: str, message: str) -> None:
        super().__init__(message)
        self.port = port


# mpremote's words when it cannot open the port (mpremote.transport_serial; the same for a
# missing, busy or forbidden port).
_MPREMOTE_NO_PORT = "failed to access"


def open_failure(port: str, err: OSError) -> str:
    """What a failed open of `port` means and what to do (pyserial's SerialException is an
    OSError with the errno of open(2), or of flock(2) when another program holds the port)."""
    code = err.errno
    if code == errno.ENOENT or (code is None and not os.path.exists(port)):
        return (
            f"no serial port {port}; plug the board in or correct the name "
            "(qlink rig list shows the ports with a board)"
        )
    if code in (errno.EACCES, errno.EPERM):
        return (
            f"no permission to open {port}; add your user to the port's group "
            f"(ls -l {port} names it, often dialout), log in again, then retry"
        )
    if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY):
        return (
            f"serial port {port} is in use by another program (a console, mpremote or another "
            "rig command); close that program, then retry"
        )
    reason = os.strerror(code) if code else str(err)
    return f"cannot open serial port {port} ({reason}); check the board and its cable"


def port_problem(port: str) -> str | None:
    """Why `port` cannot be opened, or None when it opens. Opens the port exclusively, as
    mpremote does: ask only after a tool failed, since opening a port may reset some boards."""
    import serial

    try:
        with serial.Serial(port, exclusive=True):
            return None
    except (serial.SerialException, OSError) as e:
        return open_failure(port, e)


def mpremote_exe() -> str:
    beside = Path(sys.executable).parent / "mpremote"
    return str(beside) if beside.exists() else "mpremote"


class SerialTarget:
    """A board on a serial port (USB CDC or UART; or an emulated board's pty)."""

    def __init__(self, port: str, board: str = "rp2040", baud: int = 115200) -> None:
        self.port = port
        self.board = board
        self.baud = baud
        self._lines: list[str] = []

    # -- mpremote ---------------------------------------------------------------------------
    def mpremote(self, *args: str, timeout: float = 60.0) -> str:
        cmd = [mpremote_exe(), "connect", self.port, *args]
        with steps.step("mpremote", port=self.port, args=" ".join(args)):
            try:
                proc = subprocess.run(
                    cmd, capture_output=True, text=True, timeout=timeout, check=False
                )
            except subprocess.TimeoutExpired:
                raise TargetError(
                    f"mpremote on {self.port} did not finish within {timeout:.0f} s: "
                    f"{' '.join(args)[:200]}; is the board at its REPL?"
                ) from None
        if proc.returncode != 0:
            message = (
                f"mpremote on {self.port} failed (exit {proc.returncode}) running "
                f"{' '.join(args)[:200]}:\n{(proc.stdout + proc.stderr)[-2000:]}"
            )
            if _MPREMOTE_NO_PORT in proc.stdout + proc.stderr:
                raise PortError(self.port, message)
            raise TargetError(message)
        return proc.stdout

    # -- FileTransfer ------------------------------------------------------------------------
    def exec(self, code: str, timeout: float = 30.0) -> str:
        return self.mpremote("exec", code, timeout=timeout)

    def put(self, local: Path, remote: str) -> None:
        self.mpremote("fs", "cp", str(local), ":" + remote)

    def get(self, remote: str) -> bytes:
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "file"
            self.mpremote("fs", "cp", ":" + remote, str(out))
            return out.read_bytes()

    def ls(self, remote: str = "") -> list[str]:
        text = self.exec(f"import os\nfor e in os.ilistdir({remote!r}):\n    print('E', e[0])")
        return sorted(ln[2:] for ln in text.splitlines() if ln.startswith("E "))

    def sha256(self, remotes: list[str]) -> dict[str, str]:
        text = self.exec(_HASH_SCRIPT % (remotes,))
        found = {}
        for ln in text.splitlines():
            parts = ln.split()
            if len(parts) == 3 and parts[0] == "H":
                found[parts[1]] = parts[2]
        return found

    # -- Flash --------------------------------------------------------------------------------
    def deploy(self, config: dict[str, object], root_ca_der: bytes) -> dict[str, str]:
        """Install firmware (.mpy for this board), HAL, config and root CA; verify each file's
        SHA-256 on the device. Returns device path -> digest."""
        with tempfile.TemporaryDirectory() as d:
            out = Path(d)
            files = build.build(self.board, out / "image")
            (out / "config.json").write_text(json.dumps(config))
            files["config.json"] = out / "config.json"
            ca_name = str(config.get("root_ca", "ca.der"))
            (out / "ca.der").write_bytes(root_ca_der)
            files[ca_name] = out / "ca.der"
            with steps.step("deploy", port=self.port, board=self.board, files=len(files)):
                args: list[str] = ["exec", _MKDIRS % (build.PACKAGES,)]
                for dev, local in files.items():
                    args += ["+", "fs", "cp", str(local), ":" + dev]
                self.mpremote(*args, timeout=180.0)
                want = build.sha256_of(files)
                got = self.sha256(list(want))
            bad = sorted(p for p, h in want.items() if got.get(p) != h)
            if bad:
                raise TargetError(
                    f"{self.port}: files differ from the image after copying: {', '.join(bad)}; "
                    "run the flash again (is the filesystem full?)"
                )
            return want

    # -- Reset ---------------------------------------------------------------------------------
    def soft_reset(self) -> None:
        self.mpremote("soft-reset")

    def hard_reset(self) -> None:
        # machine.reset() where the port has it; the Unix port has none, and exits with the
        # status its pty relay reads as a reset (hil.ptyrelay.EXIT_RESET). No answer comes
        # back either way: the board is gone mid-command, as after `mpremote reset`.
        with steps.step("hard_reset", port=self.port):
            self.mpremote("exec", "--no-follow", _RESET)

    # -- Console -------------------------------------------------------------------------------
    def lines(self) -> list[str]:
        return list(self._lines)

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        import serial

        def open_port() -> serial.Serial:
            try:
                return serial.Serial(self.port, self.baud, timeout=0.2)
            except (serial.SerialException, OSError) as e:
                raise PortError(self.port, open_failure(self.port, e)) from None

        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with (
            steps.step("wait_for", port=self.port, pattern=pattern),
            open_port() as ser,
        ):
            buf = b""
            while time.monotonic() < deadline:
                buf += ser.read(256)
                *whole, buf = buf.split(b"\n")
                for raw in whole:
                    line = raw.decode("utf-8", "replace").rstrip("\r")
                    self._lines.append(line)
                    m = rx.search(line)
                    if m:
                        return m
        raise TargetError(
            f"{self.port}: no console line matching {pattern!r} within {timeout:.0f}s. "
            "Console tail:\n" + "\n".join(self._lines[-30:])
        )


class EmulatedTarget:
    """An emulated board: its serial port is the relay's pty, driven like a USB board's."""

    def __init__(self, board: EmulatedBoard) -> None:
        self.board = board
        self.name = board.name

    @property
    def serial(self) -> SerialTarget:
        return SerialTarget(self.board.port, board="unix")

    # Console and Power: the relay sees all output; power is a process.
    def lines(self) -> list[str]:
        return self.board.lines()

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        with steps.step("wait_for", board=self.name, pattern=pattern):
            return self.board.wait_for(pattern, timeout)

    def power_on(self) -> None:
        with steps.step("power_on", board=self.name):
            self.board.fs.mkdir(parents=True, exist_ok=True)
            self.board.power_on()

    def power_off(self) -> None:
        with steps.step("power_off", board=self.name):
            self.board.power_off()

    def power_cycle(self) -> None:
        with steps.step("power_cycle", board=self.name):
            self.board.power_cycle()

    # FileTransfer, Flash, Reset: the serial path, as on a USB board.
    def exec(self, code: str, timeout: float = 30.0) -> str:
        return self.serial.exec(code, timeout)

    def put(self, local: Path, remote: str) -> None:
        self.serial.put(local, remote)

    def get(self, remote: str) -> bytes:
        return self.serial.get(remote)

    def ls(self, remote: str = "") -> list[str]:
        return self.serial.ls(remote)

    def sha256(self, remotes: list[str]) -> dict[str, str]:
        return self.serial.sha256(remotes)

    def deploy(self, config: dict[str, object], root_ca_der: bytes) -> dict[str, str]:
        if not self.board.running:
            self.power_on()
        return self.serial.deploy(config, root_ca_der)

    def soft_reset(self) -> None:
        self.serial.soft_reset()

    def hard_reset(self) -> None:
        # machine.reset() on a board; here the same effect through the power switch, warm.
        with steps.step("hard_reset", board=self.name):
            self.board.power_cycle()


__all__ = ["BoardError", "EmulatedTarget", "PortError", "SerialTarget", "TargetError"]
