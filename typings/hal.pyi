# The board HAL (docs/protocol.md "Board HAL"), for the type checker only: no module `hal`
# exists on a device. boards/<board>/board.py implements it; qdid and agent take it as `board`.
# Firmware names it under its typing guard, which the compiler removes (no bytecode, no global):
#     from micropython import const
#     _TYPE_CHECKING = const(0)  # true for mypy (mypy-firmware.ini always_true)
#     if _TYPE_CHECKING:
#         from hal import Board
from typing import Protocol

class Board(Protocol):
    # What board.make() returns on every board.
    @property
    def name(self) -> str: ...  # "unix", "rp2040" or "esp32"
    def sram_bits(self, nbytes: int) -> bytes: ...  # power-up SRAM, read before anything wrote it
    def noise(self, n: int) -> bytes: ...  # n raw, unconditioned noise samples
    def unique_id(self) -> bytes: ...  # the chip's factory ID: not secret, not the identity
    def cold_boot(self) -> bool: ...  # this boot followed a power-on
    def reset(self) -> None: ...  # hard reset; does not return on a real board
    def led(self, on: bool) -> None: ...

# Optional members: firmware looks for them with getattr/hasattr before use.
class ForgetsSram(Protocol):
    def forget_sram(self) -> None: ...  # zero the snapshot; later sram_bits raise ValueError

class Rtc(Protocol):
    def rtc(self) -> int: ...  # UNIX seconds from the board's real-time clock
    def set_rtc(self, t: int) -> None: ...
