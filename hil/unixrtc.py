"""The emulated board's real-time clock, as board HAL source appended to the unix board.py
while boards/unix/board.py has no `rtc()` of its own.

The RTC is the host's time plus an offset kept in the file `rtc` beside the die (outside the
device filesystem, as an RTC chip is outside flash); no file means the host's time. The rig
skews the clock by writing that file (EmulatedBoard.set_rtc); the agent sets it through
`board.set_rtc(t)` (docs/protocol.md, Board HAL)."""

from __future__ import annotations

SHIM = """

# Real-time clock of the emulated board (added by the rig; see hil/unixrtc.py): host time plus
# the offset in the file "rtc" beside the die, outside the filesystem like an RTC chip.
import time as _time


def _rtc_file():
    d = os.getenv("QLINK_DIE") or ""
    return d[: d.rfind("/") + 1] + "rtc"


def _rtc(self):
    try:
        with open(_rtc_file()) as f:
            return int(_time.time()) + int(f.read())
    except (OSError, ValueError):
        return int(_time.time())


def _set_rtc(self, t):
    with open(_rtc_file(), "w") as f:
        f.write(str(int(t) - int(_time.time())))


Board.rtc = _rtc
Board.set_rtc = _set_rtc
"""


def with_rtc(board_py: str) -> str:
    """board.py source with the RTC added, unless it has one already."""
    if "def rtc(" in board_py or "Board.rtc = " in board_py:
        return board_py
    return board_py.rstrip("\n") + "\n" + SHIM
