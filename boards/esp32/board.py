# Board HAL of ESP32 boards (ESP32-WROOM/WROVER DevKitC class) under MicroPython's esp32 port.
# One of the only modules that import `machine` (docs/protocol.md, "Board HAL").
#
# PUF region: 0x50001C00..0x50002000, the top 1 KiB of RTC slow memory.
#   ESP32 Technical Reference Manual, chapter 1 (System and Memory), embedded memory: 8 KiB of
#   RTC SLOW memory at 0x5000_0000 on the data bus. It is SRAM that no one initialises at power
#   on (the boot ROM and the second-stage bootloader leave it alone; IDF only copies/zeroes its
#   own .rtc.data/.rtc.bss sections).
#   What the MicroPython esp32 port puts there (ports/esp32/boards/sdkconfig.base,
#   machine_rtc.c): CONFIG_ULP_COPROC_RESERVE_MEM=2040 bytes for the ULP at the bottom, then IDF's
#   rtc_slow_seg with RTC_DATA_ATTR variables, of which RTC.memory() is ~2 KiB. Sections fill the
#   segment upwards from 0x50000000 + 2040, so the top stays untouched as long as the image's
#   .rtc.* sections end below 0x50001BFC: check _rtc_slow_end (or the last .rtc symbol) in the
#   firmware's .map at bring-up, and survey the region across power cycles with the rig before
#   trusting it (Hamming weight near 50 %, read-to-read distance a few %).
# Cold boot: machine.reset_cause() == PWRON_RESET and our marker is not in the word just below
#   the region (RTC slow memory keeps it over soft, watchdog and deep-sleep resets; a power-on
#   leaves random content, which equals the marker with probability 2^-32). A MicroPython soft
#   reset keeps the last hardware reset cause, so the marker is what tells it apart.
# Noise: ADC1 channel 0 (GPIO36, SENSOR_VP) left floating or on a noisy node; the low 8 bits of
#   its 12-bit conversions (the ESP32 SAR ADC is noisy by several LSB, TRM chapter "On-Chip
#   Sensors and Analog Signal Processing"). Unconditioned; qdid/entropy.py tests and conditions it.
from micropython import const
import machine

_TYPE_CHECKING = const(0)  # true for mypy only (mypy-firmware.ini); compiles to nothing here
if _TYPE_CHECKING:
    import hal

NAME = "esp32"
_PUF_BASE = const(0x50001C00)  # top 1 KiB of RTC slow memory
PUF_BYTES = const(1024)  # bytes of the PUF region
_MARK_ADDR = const(0x50001BFC)  # one word below the region
_MARK = const(0x51444944)  # "QDID": this power-on's RTC memory has been read
_ADC_PIN = const(36)  # GPIO36 = ADC1 channel 0
_LED_PIN = const(2)  # on-board LED of DevKitC-style boards


class Board:
    name = NAME

    def __init__(self) -> None:
        self._cold = machine.reset_cause() == machine.PWRON_RESET and (
            machine.mem32[_MARK_ADDR] & 0xFFFFFFFF != _MARK
        )
        self._sram: bytearray | None = None
        self._forgotten = False
        self._adc: machine.ADC | None = None
        self._led: machine.Pin | None = None

    def sram_bits(self, nbytes: int) -> bytes:
        # Snapshot the region once per boot (RTC slow memory takes 32-bit accesses only), then
        # mark it read.
        if nbytes < 0 or nbytes > PUF_BYTES:
            raise ValueError("esp32 PUF region is 1024 bytes")
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
            mem[_MARK_ADDR] = _MARK
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
            self._adc = machine.ADC(machine.Pin(_ADC_PIN))
        adc = self._adc
        out = bytearray(n)
        for i in range(n):
            out[i] = (adc.read_u16() >> 4) & 0xFF  # low 8 bits of the 12-bit conversion
        return bytes(out)

    def unique_id(self) -> bytes:
        return machine.unique_id()  # the factory MAC address from eFuse

    def cold_boot(self) -> bool:
        return self._cold

    def reset(self) -> None:
        machine.reset()

    def led(self, on: bool) -> None:
        if self._led is None:
            self._led = machine.Pin(_LED_PIN, machine.Pin.OUT)
        self._led.value(1 if on else 0)


def make() -> hal.Board:
    return Board()
