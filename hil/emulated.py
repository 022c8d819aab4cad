"""An emulated board: the MicroPython Unix port with its own filesystem and its own die.

Layout of one board under its root folder:
    fs/         the device filesystem (firmware, board.py, config.json, ca.der, data/)
    die.json    the silicon model's die (seed and parameters): outside the filesystem, like silicon
    rtc         the real-time clock's offset from the host's time in seconds (absent: none)
    console.log everything the board printed, across power cycles

Power-on starts `micropython` in fs/ (boot.py, then main.py, then the REPL, as a board does);
power-off kills the process at once, which is a power cut. The board has a serial port
(`board.port`, a /dev/pts/N) served by hil.ptyrelay: mpremote, pyserial and pytest-embedded drive
it as they drive a USB board.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

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
    ) -> None:
        self._relay: ptyrelay.PtyRelay | None = None
        self.name = name
        self.root = root / name
        self.fs = self.root / "fs"
        self.die_path = self.root / "die.json"
        self.console_path = self.root / "console.log"
        self.rtc_path = self.root / "rtc"
        self.heap = heap
        # Extra environment for the next power-ons and scripts (e.g. the cut hook's
        # QLINK_CUT_AT / QLINK_CUT_FLAG / QLINK_FILE_OPS, docs/ota.md).
        self.env: dict[str, str] = {}
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.die_path.exists():
            die = {"seed": (die_seed or secrets.token_bytes(16)).hex()}
            die.update(die_params or {})
            self.die_path.write_text(json.dumps(die))

    # -- flashing -------------------------------------------------------------------------------
    def flash(self, config: dict[str, Any], root_ca_der: bytes, *, compiled: bool = True) -> None:
        """Install the firmware and the unix board HAL, and write config + pinned root CA.

        As on a real board, packages go in as .mpy (compiled by mpy-cross for this machine's
        arch: qdid.polarsc, qdid.debias and qdid.entropy hold native code) unless `compiled` is
        False: compiling source on the device costs tens of KiB of heap that a board does not
        have to spare. Entry points stay source, as boards run them.
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
        env.update(self.env)
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
        with self.console_path.open("a") as log:
            log.write(out if out.endswith("\n") or not out else out + "\n")
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
        env["QLINK_RELAY"] = "1"  # board.reset() signals the relay (ptyrelay.RESET_SIGNAL)
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
        try:
            self.relay.power_on()
        except ptyrelay.RelayError as e:
            raise BoardError(str(e)) from None

    @property
    def running(self) -> bool:
        return self._relay is not None and self._relay.running

    def lines(self) -> list[str]:
        """The console lines of this power cycle."""
        return self._relay.lines() if self._relay is not None else []

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        """Wait until a console line of this power cycle matches `pattern` (a regex)."""
        m = self.relay.wait_for(pattern, timeout)
        if m is not None:
            return m
        state = "still running" if self.running else "stopped"
        raise BoardError(
            f"{self.name}: no console line matching {pattern!r} within {timeout:.0f}s; "
            f"board {state}. Console tail:\n" + "\n".join(self.lines()[-30:])
        )

    def power_off(self) -> None:
        """Cut the power: the process dies at once, whatever it was doing."""
        if self._relay is not None:
            self._relay.power_off()

    def power_cycle(self) -> None:
        self.power_off()
        self.power_on()
