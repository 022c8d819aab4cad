# Board HAL of RP2040 boards (Raspberry Pi Pico, Pico W) under MicroPython's rp2 port.
# One of the only modules that import `machine` (docs/protocol.md, "Board HAL").
#
# PUF region: 0x20040000..0x20040800 (2 KiB at the bottom of SRAM4).
#   RP2040 datasheet 2.2 (address map) and 2.6.2 (SRAM): SRAM4 and SRAM5 are two 4 KiB banks at
#   0x20040000 and 0x20041000, outside the striped 256 KiB of SRAM0-3.
#   What touches them before main.py runs:
#   - the boot ROM copies boot stage 2 (256 bytes) to the top of SRAM5 (0x20041F00) and runs it;
#   - MicroPython's linker script for the rp2040 (ports/rp2/memmap_mp_rp2040.ld) gives the whole
#     8 KiB (SCRATCH_Y = 0x20040000, 8k; SCRATCH_X empty) to the core 0 C stack, which grows down
#     from 0x20042000, and copies any .scratch_y section to its bottom (0x20040000); older port
#     versions (memmap_mp.ld) used SCRATCH_X = SRAM4 for the core 1 stack and .scratch_x code.
#   So the bottom of SRAM4 holds its power-up state as long as (a) the firmware image has no
#   .scratch_x/.scratch_y content (check __scratch_y_end__ == 0x20040000 in the firmware's .map)
#   and (b) the C stack never grew below 0x20040800 before this read (6 KiB of stack: boot,
#   the REPL and an import of .mpy files use far less; measure the high-water mark at bring-up by
#   painting the region). Read it first thing in boot.py, before anything recursive runs.
# Cold boot: CHIP_RESET.HAD_POR is set, and our marker is not in watchdog SCRATCH0.
#   CHIP_RESET (datasheet 2.10, core supply regulator: the VREG_AND_CHIP_RESET register list,
#   base 0x40064000, offset 0x08):
#   HAD_POR (bit 8) = the last chip reset was the power-on reset or brown-out detector, the only
#   case in which the SRAM cells started from no power; HAD_RUN (bit 16, RUN pin) and
#   HAD_PSM_RESTART (bit 20, debugger) keep the SRAM powered, so they are warm. (MicroPython's
#   machine.reset_cause() reports PWRON_RESET for a RUN-pin reset too, hence the register.)
#   Watchdog scratch registers (datasheet 4.7: SCRATCH0-7 keep their value over a watchdog or
#   soft reset, cleared by a power-on or RUN-pin reset; the boot ROM and the SDK's
#   watchdog_reboot use only SCRATCH4-7): a MicroPython soft reset (Ctrl-D) keeps CHIP_RESET,
#   so the marker is what tells it apart.
# Noise: the temperature sensor (ADC input 4; datasheet 4.9, ADC and temperature sensor): the low
#   8 bits of its 12-bit conversions carry the converter's thermal noise. Unconditioned
#   (qdid/entropy.py tests and conditions them). The ring oscillator's RANDOMBIT (datasheet 2.17)
#   is the other candidate if the ADC fails the health tests on a board.
from micropython import const
import machine

_TYPE_CHECKING = const(0)  # true for mypy only (mypy-firmware.ini); compiles to nothing here
if _TYPE_CHECKING:
    import hal

NAME = "rp2040"
_PUF_BASE = const(0x20040000)  # bottom of SRAM4
PUF_BYTES = const(2048)  # bytes of the PUF region
_CHIP_RESET = const(0x40064008)  # VREG_AND_CHIP_RESET_BASE 0x40064000 + CHIP_RESET offset 0x08
_HAD_POR = const(0x100)  # CHIP_RESET bit 8
_WD_SCRATCH0 = const(0x4005800C)  # WATCHDOG_BASE 0x40058000 + SCRATCH0 offset 0x0c
_MARK = const(0x51444944)  # "QDID": this power-on's SRAM has been read
_ADC_TEMP = const(4)  # ADC input of the on-chip temperature sensor


class Board:
    name = NAME

    def __init__(self) -> None:
        mem = machine.mem32
        self._cold = bool(mem[_CHIP_RESET] & _HAD_POR) and mem[_WD_SCRATCH0] != _MARK
        self._sram: bytearray | None = None
        self._forgotten = False
        self._adc: machine.ADC | None = None
        self._led: machine.Pin | None = None

    def sram_bits(self, nbytes: int) -> bytes:
        # Snapshot the region once per boot (word reads, the bus is 32-bit), then mark it read.
        if nbytes < 0 or nbytes > PUF_BYTES:
            raise ValueError("rp2040 PUF region is 2048 bytes")
        if self._forgotten:
            raise ValueError("SRAM power-up state was already used and forgotten this boot")
        if self._sram is None:
            buf = bytearray(PUF_BYTES)
            mem = machine.mem32
            for i in range(0, PUF_BYTES, 4):
                w = mem[_PUF_BASE + i]
                buf[i] = w & 0xFF
                buf[i + 1] = (w >> 8) & 0xFF
                buf[i + 2] = (w >> 16) & 0xFF
                buf[i + 3] = (w >> 24) & 0xFF
            self._sram = buf
            mem[_WD_SCRATCH0] = _MARK
        return bytes(self._sram[:nbytes])

    def forget_sram(self) -> None:
        # Zero and drop the snapshot once the identity has its copy (key material in RAM).
        if self._sram is not None:
            for i in range(len(self._sram)):
                self._sram[i] = 0
        self._sram = None
        self._forgotten = True

    def noise(self, n: int) -> bytes:
        if self._adc is None:
            self._adc = machine.ADC(_ADC_TEMP)
        adc = self._adc
        out = bytearray(n)
        for i in range(n):
            # read_u16 scales the 12-bit result to 16 bits (value << 4 | value >> 8): take the
            # 12-bit conversion's low 8 bits.
            out[i] = (adc.read_u16() >> 4) & 0xFF
        return bytes(out)

    def unique_id(self) -> bytes:
        return machine.unique_id()  # the flash chip's 64-bit unique ID

    def cold_boot(self) -> bool:
        return self._cold

    def reset(self) -> None:
        machine.reset()

    def led(self, on: bool) -> None:
        if self._led is None:
            self._led = machine.Pin("LED", machine.Pin.OUT)
        self._led.value(1 if on else 0)


def make() -> hal.Board:
    return Board()
