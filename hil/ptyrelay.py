"""A serial port for an emulated board: a pty whose far end is a `micropython` process.

Tools open the client side (`/dev/pts/N`) exactly as they open a USB board's port: mpremote,
pyserial, pytest-embedded. The Unix port's own REPL (pyexec) speaks the friendly REPL, the raw
REPL and raw-paste; this relay adds what a board's USB console has and a process lacks:

* **Ctrl-C interrupts running code.** The process's own pty is raw (no ISIG, so the REPL gets
  every byte), so a Ctrl-C from the client while the board is busy (main.py running, or a raw
  REPL exec) becomes SIGINT, and input that follows is held until the REPL shows its prompt (a
  board drops nothing typed after Ctrl-C either). A process the SIGINT kills or hangs (see
  `_INTERRUPT_GRACE_S`) comes back at the REPL after the `KeyboardInterrupt` line a board prints.
* **Soft reset survives the process.** The Unix port exits where a board reboots (Ctrl-D at the
  friendly prompt or at an empty raw REPL, `sys.exit()`): the relay prints
  `MPY: soft reboot`, starts the process again on the same port (warm: no fresh SRAM state) and,
  if the client was in the raw REPL, enters it again, as a board does (boot.py only). Exit
  status 3 is a hard reset instead (board.reset()): boot.py and main.py run, the raw REPL is gone.
* **Power.** `power_off()` kills the process group at once: a power cut at whatever instant.

Everything the board prints is kept line by line (console log, `wait_for`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import select
import signal
import subprocess
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path

# What the board prints that tells the relay it waits for input (pyexec's prompts).
_FRIENDLY_PROMPTS = (b">>> ", b"... ")
_RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n>"
_RAW_DONE = b"\x04>"  # end of a raw REPL exec: stdout EOF, stderr EOF, prompt
_SOFT_REBOOT = b"MPY: soft reboot\r\n"
_CTRL_A, _CTRL_B, _CTRL_C, _CTRL_D = 0x01, 0x02, 0x03, 0x04
_READ = 4096
_TAIL = 64

# How the relay (re)starts the process: the cause decides cold/warm and what runs first.
POWER_ON = "power_on"  # cold: boot.py, main.py, then the REPL
SOFT_RESET = "soft_reset"  # warm: boot.py, main.py, then the REPL
SOFT_RESET_RAW = "soft_reset_raw"  # warm: boot.py, then back into the raw REPL
HARD_RESET = "hard_reset"  # warm (SRAM kept powered): boot.py, main.py, then the REPL
# After Ctrl-C a board sits at its REPL. The Unix port may instead end (a SIGINT that lands while
# its handler is not installed kills it): the board then comes back warm at the REPL, boot.py
# only, never main.py, which a Ctrl-C was meant to stop.
INTERRUPTED = "interrupted"
# The Unix port raises KeyboardInterrupt from inside its signal handler (MICROPY_ASYNC_KBD_INTR),
# wherever the process is: a SIGINT that lands inside the garbage collector leaves its heap
# locked (the process dies: "heap is locked", "FATAL: uncaught NLR") or its lock held (it hangs).
# A board's Ctrl-C is a pending exception, raised between bytecodes, and never does either; so
# an interrupted process that ends without printing KeyboardInterrupt gets the line a board
# prints, and one that prints nothing at all for this long after the Ctrl-C (one that goes on
# printing is alive) is cut off and restarted the same way.
_INTERRUPT_GRACE_S = 5.0
_KBD_LINE = b"KeyboardInterrupt: \r\n"
# Exit status of the process that means "reset me" (boards/unix/board.py Board.reset).
EXIT_RESET = 3
# board.reset() under the relay (boards/unix/board.py): `micropython -i` turns a SystemExit from
# its startup code into the REPL, so the HAL ends the process with this signal instead.
RESET_SIGNAL = signal.SIGUSR1

Spawner = Callable[[int, str], "subprocess.Popen[bytes]"]


class RelayError(RuntimeError):
    pass


class PtyRelay:
    """One emulated board's serial port. `spawn(slave_fd, cause)` starts the process."""

    def __init__(self, spawn: Spawner, console_log: Path, name: str = "board") -> None:
        self.name = name
        self._spawn = spawn
        self._console_log = console_log
        self._client_master, client_slave = os.openpty()
        # Raw like a USB CDC port: no echo, no CR/LF translation. Our own slave fd stays open so
        # the port exists (and reads do not fail) while no tool has it open.
        tty.setraw(client_slave)
        self._client_slave = client_slave
        self.port = os.ttyname(client_slave)
        os.set_blocking(self._client_master, False)
        self._wake_r, self._wake_w = os.pipe()
        self._lock = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None
        self._proc_master: int | None = None
        self._powered = False
        self._busy = False  # running code: Ctrl-C must become SIGINT
        self._raw = False  # client is in the raw REPL
        self._held = bytearray()  # client input waiting for a prompt
        self._holding = False
        self._hide_until_prompt = False  # re-entering the raw REPL after a soft reset
        self._interrupted = False  # a Ctrl-C became SIGINT and the prompt has not shown yet
        self._quiet_since = 0.0  # the Ctrl-C, or the process's last output after it (monotonic)
        self._kbd_seen = False  # the process printed KeyboardInterrupt since
        self._tail = b""
        self._partial = b""
        self._lines: list[str] = []
        self.boots = 0
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"relay-{name}", daemon=True)
        self._thread.start()

    # -- power ------------------------------------------------------------------------------
    def power_on(self) -> None:
        with self._lock:
            if self._powered:
                raise RelayError(f"{self.name}: already powered")
            self._lines = []
            self._partial = b""
            self._start(POWER_ON)
            self._powered = True
        self._wake()

    def power_off(self) -> None:
        """Cut the power: SIGKILL to the process group, whatever it was doing."""
        with self._lock:
            self._powered = False
            proc = self._proc
            self._held.clear()
            self._holding = False
            self._busy = False
            self._raw = False
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        # The relay thread reads what the process left in its pty, then closes it.
        with self._lock:
            deadline = time.monotonic() + 5
            while self._proc_master is not None and time.monotonic() < deadline:
                self._lock.wait(timeout=0.1)
            self._flush_partial_locked()

    @property
    def running(self) -> bool:
        with self._lock:
            return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        with self._lock:
            return None if self._proc is None else self._proc.pid

    def close(self) -> None:
        self.power_off()
        self._closed = True
        self._wake()
        self._thread.join(timeout=5)
        for fd in (self._client_master, self._client_slave, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- console ----------------------------------------------------------------------------
    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str] | None:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._lock:
            while True:
                for line in self._lines[seen:]:
                    m = rx.search(line)
                    if m:
                        return m
                seen = len(self._lines)
                left = deadline - time.monotonic()
                if left <= 0 or not self._powered:
                    return None
                self._lock.wait(timeout=min(left, 0.5))

    def discard_client_input(self) -> None:
        """Forget output no tool has read yet (what a board printed while nobody listened)."""
        import termios

        termios.tcflush(self._client_slave, termios.TCIFLUSH)

    # -- internals --------------------------------------------------------------------------
    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"!")

    def _start(self, cause: str) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        try:
            self._proc = self._spawn(slave, cause)
        finally:
            os.close(slave)
        self._proc_master = master
        self.boots += 1
        self._busy = True
        self._tail = b""
        self._hide_until_prompt = cause == SOFT_RESET_RAW
        self._holding = cause in (SOFT_RESET_RAW, INTERRUPTED)
        self._interrupted = False

    def _loop(self) -> None:
        while not self._closed:
            with self._lock:
                pm = self._proc_master
            fds = [self._client_master, self._wake_r] + ([pm] if pm is not None else [])
            try:
                ready, _, _ = select.select(fds, [], [], 1.0)
            except (OSError, ValueError):
                time.sleep(0.05)  # an fd closed under us by power_off; take the new set
                continue
            self._check_interrupt()
            if self._wake_r in ready:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 256)
            if self._client_master in ready:
                try:
                    data = os.read(self._client_master, _READ)
                except OSError:
                    data = b""
                if data:
                    with self._lock:
                        self._from_client(data)
            if pm is not None and pm in ready:
                self._from_board(pm)

    def _from_board(self, pm: int) -> None:
        try:
            data = os.read(pm, _READ)
        except OSError as e:
            if e.errno not in (errno.EIO, errno.EBADF):
                raise
            data = b""
        if data:
            with self._lock:
                self._output(data)
            return
        # The process closed its pty: it exited (a board would have rebooted), or we cut power.
        with self._lock:
            proc = self._proc
            self._proc = None
            self._proc_master = None
            os.close(pm)
            self._lock.notify_all()
            status = proc.wait(timeout=10) if proc is not None else None
            self._flush_partial_locked()
            if not self._powered:
                return
            if self._interrupted:
                if not self._kbd_seen:
                    self._output(_KBD_LINE)  # see _INTERRUPT_GRACE_S
                self._start(INTERRUPTED)
                return
            if status in (EXIT_RESET, -RESET_SIGNAL):
                # A hard reset (board.reset(), or the rig's machine.reset() stand-in): the board
                # runs boot.py and main.py again, and any raw REPL session is gone with it.
                self._raw = False
                self._start(HARD_RESET)
                return
            self._output(_SOFT_REBOOT)
            self._start(SOFT_RESET_RAW if self._raw else SOFT_RESET)

    def _from_client(self, data: bytes) -> None:
        for b in data:
            if self._holding:
                self._held.append(b)
                continue
            if b == _CTRL_C and self._busy and self._proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._proc.pid, signal.SIGINT)
                self._interrupted = True  # until the prompt shows
                self._quiet_since = time.monotonic()
                self._kbd_seen = False
                self._holding = True  # what follows waits for the prompt
                continue
            if self._raw and b == _CTRL_D:
                self._busy = True  # exec (or soft reset) until "\x04>"
            elif self._raw and b == _CTRL_B:
                self._raw = False
            self._to_board(bytes([b]))

    def _to_board(self, data: bytes) -> None:
        if self._proc_master is None:
            return  # no power: a board's UART drops it too
        with contextlib.suppress(OSError):
            os.write(self._proc_master, data)

    def _check_interrupt(self) -> None:
        """A process that took a Ctrl-C and has printed nothing since, in time, is hung (see
        _INTERRUPT_GRACE_S): kill it; the exit path restarts it at the REPL."""
        with self._lock:
            proc = self._proc
            silent = time.monotonic() - self._quiet_since > _INTERRUPT_GRACE_S
            late = self._interrupted and silent
        if late and proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    def _output(self, data: bytes) -> None:
        if self._interrupted:
            self._quiet_since = time.monotonic()
            if b"KeyboardInterrupt" in self._tail + data:
                self._kbd_seen = True
        self._tail = (self._tail + data)[-_TAIL:]
        idle = False
        if self._tail.endswith(_RAW_BANNER):
            self._raw, idle = True, True
        elif self._raw and self._tail.endswith(_RAW_DONE):
            idle = True
        elif self._tail.endswith(_FRIENDLY_PROMPTS):
            if self._hide_until_prompt:
                # Fresh process after a soft reset in the raw REPL: back into it, banner unseen.
                self._hide_until_prompt = False
                self._record(data.rsplit(b"MicroPython ", 1)[0])
                self._to_board(bytes([_CTRL_A]))
                return
            self._raw, idle = False, True
        self._record(data)
        if not self._hide_until_prompt:
            self._to_client(data)
        if idle:
            self._busy = False
            self._interrupted = False
            if self._holding:
                self._holding = False
                held = bytes(self._held)
                self._held.clear()
                self._from_client(held)

    def _to_client(self, data: bytes) -> None:
        try:
            os.write(self._client_master, data)
        except BlockingIOError:
            pass  # nobody reads the port and its buffer is full: dropped, like a UART's

    def _record(self, data: bytes) -> None:
        if not data:
            return
        text = self._partial + data
        *whole, self._partial = text.split(b"\n")
        if not whole:
            return
        lines = [w.decode("utf-8", "replace").rstrip("\r") for w in whole]
        with self._console_log.open("a") as log:
            log.writelines(line + "\n" for line in lines)
        self._lines.extend(lines)
        self._lock.notify_all()

    def _flush_partial_locked(self) -> None:
        if self._partial:
            self._record(b"\n")
