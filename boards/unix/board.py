# Board HAL of the emulated board: the MicroPython Unix port over a silicon model.
# Same surface as boards/rp2040 and boards/esp32 (docs/protocol.md, "Board HAL"); the die lives
# in the file named by QLINK_DIE, outside the device filesystem, as silicon does.
from micropython import const
import os
import time
import silicon

_TYPE_CHECKING = const(0)  # true for mypy only (mypy-firmware.ini); compiles to nothing here
if _TYPE_CHECKING:
    import hal

NAME = "unix"
_EXIT_RESET = const(3)  # exit status the rig reads as "board asked for a reset"
_STUCK = const(0x80)  # ADC code of a failed noise input (shorted or floating: one code)

# Fault hook for the rig: QLINK_NOISE_FAULT names a file; while that file exists the modelled
# ADC reads one code, as a real board's noise input can fail after boot (tests/attacks/
# test_entropy.py creates it while the agent runs). Looked up once per power cycle; when it is
# unset, noise() pays nothing for it.
_NOISE_FAULT = os.getenv("QLINK_NOISE_FAULT") or ""


class Board:
    name = NAME

    def __init__(self, die: silicon.Die) -> None:
        self._die = die
        self._sram = bytearray()
        self._forgotten = False

    def sram_bits(self, nbytes: int) -> bytes:
        # One power-up state per process (a process is one power cycle): later calls in the same
        # boot see the same SRAM content, extended with fresh cells if more is asked for.
        if self._forgotten:
            raise ValueError("SRAM power-up state was already used and forgotten this boot")
        if nbytes > len(self._sram):
            more = self._die.power_up(nbytes)
            self._sram = self._sram + more[len(self._sram) :]
        return bytes(self._sram[:nbytes])

    def forget_sram(self) -> None:
        # Drop the snapshot once the identity has its copy: the power-up state is key material
        # and a later read in this boot would not be a power-up state anyway (the region is in
        # use on a real board).
        sram = self._sram
        for i in range(len(sram)):
            sram[i] = 0
        self._sram = bytearray()
        self._forgotten = True

    def noise(self, n: int) -> bytes:
        # Raw samples of a modelled 8-bit ADC: mid-scale plus the sum of two 6-bit uniform noise
        # terms (a triangular spread, so not every value is equally likely: max p = 64/4096,
        # min-entropy 6 bits per sample). Unconditioned, like a real ADC's low bits.
        if _NOISE_FAULT and _exists(_NOISE_FAULT):
            return bytes((_STUCK,)) * n
        out = bytearray(n)
        for i in range(n):
            if not i & 63:
                raw = os.urandom(128)  # 64 samples' worth, so nothing large is allocated
            j = (i & 63) << 1
            out[i] = 64 + (raw[j] & 0x3F) + (raw[j + 1] & 0x3F)
        return bytes(out)

    def unique_id(self) -> bytes:
        return self._die.uid()

    def cold_boot(self) -> bool:
        # A process start is a power-on unless the rig says it emulates a warm reset.
        return os.getenv("QLINK_WARM_BOOT") != "1"

    def reset(self) -> None:
        # The rig restarts the process: that is the reset. Under the rig's pty relay the process
        # runs `micropython -i`, where a SystemExit from the startup code only drops into the
        # REPL; so there it ends by SIGUSR1, which the relay reads as a reset
        # (hil.ptyrelay.RESET_SIGNAL). Elsewhere the exit status says it.
        if os.getenv("QLINK_RELAY") == "1":
            os.system("kill -USR1 $PPID")  # the shell's parent is this process
        raise SystemExit(_EXIT_RESET)

    def led(self, on: bool) -> None:
        print("D board: led", "on" if on else "off")

    def rtc(self) -> int:
        # Battery-backed RTC: the host's time plus the offset (s) in the file "rtc" beside the
        # die, outside the device filesystem as an RTC chip is outside flash; the rig skews it
        # there (hil.emulated.EmulatedBoard.set_rtc). No file: the host's time.
        try:
            with open(_rtc_file()) as f:
                return int(time.time()) + int(f.read())
        except (OSError, ValueError):
            return int(time.time())

    def set_rtc(self, t: int) -> None:
        with open(_rtc_file(), "w") as f:
            f.write(str(int(t) - int(time.time())))


def _exists(path: str) -> bool:
    try:
        os.stat(path)
    except OSError:
        return False
    return True


# Power-cut hook for the rig (docs/ota.md, "The emulated board's cut hook"): boot.py and the OTA
# code call file_op(tag) before each file write, rename or removal. QLINK_CUT_AT=N makes the N-th
# call of this process a power cut (SIGKILL: nothing flushed, closed or printed after it) unless
# the file named by QLINK_CUT_FLAG exists; the flag is created first, so each cut happens once.
# QLINK_FILE_OPS names a file that gets one "N tag" line per call, so a rig can count the
# operations of a phase. The count lives in the process's environment: boot.py drops this module
# and main.py imports it again, and the count must go on. Real boards have no file_op.
_CUT_AT = int(os.getenv("QLINK_CUT_AT") or 0)
_CUT_FLAG = os.getenv("QLINK_CUT_FLAG") or ""
_FILE_OPS = os.getenv("QLINK_FILE_OPS") or ""
_OPS_VAR = "QLINK_FILE_OP_COUNT"


def file_op(tag: str) -> None:
    if not (_CUT_AT or _FILE_OPS):
        return
    n = int(os.getenv(_OPS_VAR) or 0) + 1
    os.putenv(_OPS_VAR, str(n))
    if _FILE_OPS:
        with open(_FILE_OPS, "a") as f:
            f.write("%d %s\n" % (n, tag))
    if n == _CUT_AT and not (_CUT_FLAG and _exists(_CUT_FLAG)):
        if _CUT_FLAG:
            open(_CUT_FLAG, "w").close()
        # The Unix port has no os.kill: the shell's parent is this process.
        os.system("kill -9 $PPID")


def _rtc_file() -> str:
    die = os.getenv("QLINK_DIE") or ""
    return die[: die.rfind("/") + 1] + "rtc"


def make(die_path: str | None = None) -> hal.Board:
    return Board(silicon.load(die_path))
