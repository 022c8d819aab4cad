"""An emulated board: the MicroPython Unix port with its own filesystem and its own die.

Layout of one board under its root folder:
    fs/         the device filesystem (firmware, board.py, config.json, ca.der, data/)
    die.json    the silicon model's die (seed and parameters): outside the filesystem, like silicon
    rtc         the real-time clock's offset from the host's time in seconds (absent: none)
    console.log everything the board printed, across power cycles

Power-on starts `micropython` in fs/ (boot.py, then main.py, then the REPL, as a board does);
power-off kills the process at once, which is a power cut. With `console="pty"` (the default) the
board has a serial port (`board.port`, a /dev/pts/N) served by hil.ptyrelay: mpremote, pyserial
and pytest-embedded drive it as they drive a USB board. `console="pipe"` is the plain process
with its output on a pipe (no REPL), kept for comparison.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from hil import ptyrelay, unixport

_FIRMWARE_DIRS = ("qdid", "agent")
_FIRMWARE_FILES = ("boot.py", "main.py", "enrol.py")
_QDID_LINE = re.compile(r"^QDID (\{.*\})\s*$")


class BoardError(RuntimeError):
    """A board did something the rig did not expect; the message carries its console tail."""


def _compile(src: Path, out: Path, name: str) -> None:
    proc = subprocess.run(
        [*unixport.mpy_cross_cmd(), "-s", name, "-o", str(out), str(src)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise BoardError(f"mpy-cross could not compile {src}: {proc.stderr.strip()}")


class EmulatedBoard:
    def __init__(
        self,
        root: Path,
        name: str = "board",
        *,
        die_seed: bytes | None = None,
        heap: int = unixport.HEAP_RP2040,
        die_params: dict[str, Any] | None = None,
        console: str = "pty",
    ) -> None:
        if console not in ("pty", "pipe"):
            raise ValueError(f"console must be 'pty' or 'pipe', not {console!r}")
        self.console = console
        self._relay: ptyrelay.PtyRelay | None = None
        self.name = name
        self.root = root / name
        self.fs = self.root / "fs"
        self.die_path = self.root / "die.json"
        self.console_path = self.root / "console.log"
        self.rtc_path = self.root / "rtc"
        self.heap = heap
        self._proc: subprocess.Popen[str] | None = None
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.die_path.exists():
            die = {"seed": (die_seed or secrets.token_bytes(16)).hex()}
            die.update(die_params or {})
            self.die_path.write_text(json.dumps(die))

    # -- flashing -------------------------------------------------------------------------------
    def flash(self, config: dict[str, Any], root_ca_der: bytes, *, compiled: bool = True) -> None:
        """Install the firmware and the unix board HAL, and write config + pinned root CA.

        As on a real board, packages go in as .mpy (compiled by mpy-cross for this machine's
        arch, as qdid.polar holds native code) unless `compiled` is False: compiling source on
        the device costs tens of KiB of heap that a board does not have to spare. Entry points
        stay source, as boards run them.
        """
        self.fs.mkdir(parents=True, exist_ok=True)
        for sub in _FIRMWARE_DIRS:
            dst = self.fs / sub
            if dst.exists():
                shutil.rmtree(dst)
            dst.mkdir()
            for src in sorted((unixport.FIRMWARE / sub).glob("*.py")):
                if compiled:
                    _compile(src, dst / (src.stem + ".mpy"), f"{sub}/{src.name}")
                else:
                    shutil.copy2(src, dst / src.name)
        for name in _FIRMWARE_FILES:
            src = unixport.FIRMWARE / name
            if src.exists():
                shutil.copy2(src, self.fs / name)
        shutil.copy2(unixport.BOARDS / "unix" / "board.py", self.fs / "board.py")
        silicon = unixport.BOARDS / "unix" / "silicon.py"
        if silicon.exists():
            shutil.copy2(silicon, self.fs / "silicon.py")
        (self.fs / "config.json").write_text(json.dumps(config))
        (self.fs / config.get("root_ca", "ca.der")).write_bytes(root_ca_der)

    # -- the real-time clock (battery-backed: survives power cycles) ----------------------------
    def set_rtc(self, t: float) -> None:
        """Set the board's RTC to UNIX time `t` (e.g. 2000-01-01 after a dead battery)."""
        self.rtc_path.write_text(str(int(t) - int(time.time())))

    def rtc(self) -> int:
        """The board's RTC now, in UNIX seconds."""
        try:
            return int(time.time()) + int(self.rtc_path.read_text())
        except (OSError, ValueError):
            return int(time.time())

    def files(self) -> Iterable[Path]:
        return (p for p in self.fs.rglob("*") if p.is_file())

    # -- running --------------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["QLINK_DIE"] = str(self.die_path)
        # Like a board: modules come from its own filesystem only.
        env["MICROPYPATH"] = str(self.fs)
        return env

    def run_script(self, code: str, timeout: float = 60.0) -> str:
        """Run a one-off script on the board (as `mpremote exec` would) and return its output."""
        proc = subprocess.run(
            [unixport.micropython(), "-X", f"heapsize={self.heap}"],
            input=code,
            cwd=self.fs,
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        out = proc.stdout + proc.stderr
        self._record(out.splitlines())
        if proc.returncode != 0:
            raise BoardError(f"{self.name}: script failed (exit {proc.returncode}):\n{out[-2000:]}")
        return out

    def enrol(self) -> dict[str, str]:
        """Factory step: run enrol.py and return the public identity it prints."""
        out = self.run_script("import enrol\n", timeout=120.0)
        for line in out.splitlines():
            m = _QDID_LINE.match(line)
            if m:
                identity: dict[str, str] = json.loads(m.group(1))
                return identity
        raise BoardError(f"{self.name}: enrol.py printed no QDID line:\n{out[-2000:]}")

    # -- the serial port (pty console) ----------------------------------------------------------
    @property
    def relay(self) -> ptyrelay.PtyRelay:
        if self.console != "pty":
            raise BoardError(f"{self.name}: a console='pipe' board has no serial port")
        if self._relay is None:
            self._relay = ptyrelay.PtyRelay(self._spawn, self.console_path, self.name)
        return self._relay

    @property
    def port(self) -> str:
        """The board's serial port, as a USB board's /dev/ttyACM0."""
        return self.relay.port

    def _spawn(self, slave: int, cause: str) -> subprocess.Popen[bytes]:
        boot_only = cause in (ptyrelay.SOFT_RESET_RAW, ptyrelay.INTERRUPTED)
        code = "import boot" if boot_only else "import boot\nimport main"
        env = self._env()
        if cause != ptyrelay.POWER_ON:
            env["QLINK_WARM_BOOT"] = "1"  # a reset keeps the SRAM powered
        return subprocess.Popen(
            [unixport.micropython(), "-X", f"heapsize={self.heap}", "-i", "-c", code],
            cwd=self.fs,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )

    def close(self) -> None:
        """Power off and release the serial port."""
        self.power_off()
        if self._relay is not None:
            self._relay.close()
            self._relay = None

    def power_on(self) -> None:
        if self.console == "pty":
            try:
                self.relay.power_on()
            except ptyrelay.RelayError as e:
                raise BoardError(str(e)) from None
            return
        if self._proc is not None and self._proc.poll() is None:
            raise BoardError(f"{self.name}: already powered")
        with self._cond:
            self._lines = []
        self._proc = subprocess.Popen(
            [
                unixport.micropython(),
                "-X",
                f"heapsize={self.heap}",
                "-c",
                "import boot\nimport main",
            ],
            cwd=self.fs,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert self._proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self._proc.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._record([line.rstrip("\n")])
        with self._cond:
            self._cond.notify_all()

    def _record(self, lines: list[str]) -> None:
        with self.console_path.open("a") as log:
            for line in lines:
                log.write(line + "\n")
        with self._cond:
            self._lines.extend(lines)
            self._cond.notify_all()

    @property
    def running(self) -> bool:
        if self._relay is not None:
            return self._relay.running
        return self._proc is not None and self._proc.poll() is None

    def lines(self) -> list[str]:
        if self._relay is not None:
            return self._relay.lines()
        with self._cond:
            return list(self._lines)

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        """Wait until a console line of this power cycle matches `pattern` (a regex)."""
        if self._relay is not None:
            m = self._relay.wait_for(pattern, timeout)
            if m is not None:
                return m
            state = "still running" if self.running else "stopped"
            raise BoardError(
                f"{self.name}: no console line matching {pattern!r} within {timeout:.0f}s; "
                f"board {state}. Console tail:\n" + "\n".join(self.lines()[-30:])
            )
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self._lines[seen:]:
                    m = rx.search(line)
                    if m:
                        return m
                seen = len(self._lines)
                left = deadline - time.monotonic()
                if left <= 0 or (not self.running and self._reader_done()):
                    break
                self._cond.wait(timeout=min(left, 1.0))
        state = "still running" if self.running else f"stopped (exit {self._exit_code()})"
        raise BoardError(
            f"{self.name}: no console line matching {pattern!r} within {timeout:.0f}s; "
            f"board {state}. Console tail:\n" + "\n".join(self._lines[-30:])
        )

    def _reader_done(self) -> bool:
        return self._reader is None or not self._reader.is_alive()

    def _exit_code(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def power_off(self) -> None:
        """Cut the power: the process dies at once, whatever it was doing."""
        if self._relay is not None:
            self._relay.power_off()
        if self._proc is None:
            return
        if self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._proc = None

    def power_cycle(self) -> None:
        self.power_off()
        self.power_on()
