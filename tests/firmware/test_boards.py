# The RP2040 and ESP32 board HALs (boards/*/board.py) on the Unix port, over a fake `machine`
# module put on sys.path ahead of the port's own.
# The fake machine keeps every read address and a dict of 512 big-int words: 96k, not 64k.
# heapsize: 96k
import os
import sys
import json

REPO = os.getenv("QLINK_REPO") or "."

FAKE_MACHINE = """
PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
cause = PWRON_RESET
resets = 0


def reset_cause():
    return cause


def reset():
    global resets
    resets += 1


def unique_id():
    return b"\\xe6\\x61\\x41\\x04\\x03\\x2b\\x5c\\x2a"


class _Mem:
    def __init__(self):
        self.words = {}
        self.reads = []
        self.writes = []

    def __getitem__(self, addr):
        if addr % 4:
            raise ValueError("unaligned")
        self.reads.append(addr)
        return self.words.get(addr, 0)

    def __setitem__(self, addr, value):
        self.writes.append((addr, value))
        self.words[addr] = value & 0xFFFFFFFF


mem32 = _Mem()


class Pin:
    OUT = 1
    IN = 0
    made = []

    def __init__(self, ident, mode=None):
        self.ident = ident
        self.mode = mode
        self.v = 0
        Pin.made.append(self)

    def value(self, v=None):
        if v is None:
            return self.v
        self.v = v


class ADC:
    samples = [0]
    made = []

    def __init__(self, source):
        self.source = source
        self.i = 0
        ADC.made.append(self)

    def read_u16(self):
        v = ADC.samples[self.i % len(ADC.samples)]
        self.i += 1
        return v
"""

_tmp = "/tmp/qlink-boards-" + "".join("%02x" % b for b in os.urandom(6))
os.mkdir(_tmp)
with open(_tmp + "/machine.py", "w") as f:
    f.write(FAKE_MACHINE)
for _name in ("rp2040", "esp32"):
    with open(REPO + "/boards/" + _name + "/board.py") as src:
        with open(_tmp + "/board_" + _name + ".py", "w") as dst:
            dst.write(src.read())
sys.path.insert(0, _tmp)

import machine  # the fake above
import board_rp2040
import board_esp32
from fwtest import raises_msg as _raises

for _n in os.listdir(_tmp):
    os.remove(_tmp + "/" + _n)
os.rmdir(_tmp)


def _power_on(base, nwords, cause=1, chip_reset=None):
    # Fresh memory with a known power-up pattern in the PUF window (high words above 2^31 too).
    # RP2040 CHIP_RESET: HAD_POR (bit 8) after a power-on unless the test says otherwise.
    machine.mem32 = machine._Mem()
    machine.cause = cause
    if chip_reset is None:
        chip_reset = 0x100 if cause == machine.PWRON_RESET else 0
    machine.mem32.words[0x40064008] = chip_reset
    for i in range(nwords):
        machine.mem32.words[base + 4 * i] = (0x9E3779B9 * (i + 1)) & 0xFFFFFFFF
    return machine.mem32


def _expected(nwords):
    out = bytearray()
    for i in range(nwords):
        w = (0x9E3779B9 * (i + 1)) & 0xFFFFFFFF
        out.extend(bytes((w & 0xFF, (w >> 8) & 0xFF, (w >> 16) & 0xFF, w >> 24)))
    return bytes(out)


def test_fake_machine_is_the_one_imported():
    assert hasattr(machine, "_Mem")


def test_rp2040_reads_the_bottom_2_kib_of_sram4_little_endian():
    mem = _power_on(0x20040000, 512)
    b = board_rp2040.make()
    assert b.name == "rp2040"
    got = b.sram_bits(2048)
    assert got == _expected(512)
    assert mem.reads[:2] == [0x40064008, 0x4005800C]  # CHIP_RESET, SCRATCH0 at construction
    assert min(mem.reads[2:]) == 0x20040000 and max(mem.reads[2:]) == 0x200407FC
    assert b.sram_bits(496) == got[:496]


def test_rp2040_reads_once_per_boot_and_marks_the_read():
    mem = _power_on(0x20040000, 512)
    b = board_rp2040.make()
    b.sram_bits(16)
    n = len(mem.reads)
    b.sram_bits(2048)
    assert len(mem.reads) == n  # snapshot, not a second read of live (now used) memory
    assert mem.writes == [(0x4005800C, 0x51444944)]  # watchdog SCRATCH0 marker


def test_boards_forget_the_snapshot_once_used():
    for mod, base, nwords in ((board_rp2040, 0x20040000, 512), (board_esp32, 0x50001C00, 256)):
        _power_on(base, nwords)
        b = mod.make()
        got = b.sram_bits(64)
        snap = b._sram
        b.forget_sram()
        assert snap == bytearray(len(snap))  # zeroed in place, not just dropped
        assert got != bytes(64)  # the caller's copy is its own
        assert "forgotten" in _raises(ValueError, b.sram_bits, 16)


def test_rp2040_cold_boot_needs_power_on_and_no_marker():
    _power_on(0x20040000, 512)
    b = board_rp2040.make()
    assert b.cold_boot() is True
    b.sram_bits(16)
    # A soft reset keeps the reset cause and the scratch register: no longer a cold boot.
    assert board_rp2040.make().cold_boot() is False
    _power_on(0x20040000, 512, cause=machine.WDT_RESET)
    assert board_rp2040.make().cold_boot() is False
    # A RUN-pin reset keeps the SRAM powered: warm, although reset_cause() says power-on.
    _power_on(0x20040000, 512, chip_reset=1 << 16)
    assert board_rp2040.make().cold_boot() is False
    _power_on(0x20040000, 512, chip_reset=(1 << 8) | (1 << 16))
    assert board_rp2040.make().cold_boot() is True


def test_rp2040_sram_bounds():
    _power_on(0x20040000, 512)
    b = board_rp2040.make()
    _raises(ValueError, b.sram_bits, 2049)
    _raises(ValueError, b.sram_bits, -1)
    assert board_rp2040.PUF_BYTES == 2048


def test_rp2040_noise_is_the_temperature_sensor_low_bits():
    _power_on(0x20040000, 1)
    machine.ADC.made = []
    # read_u16 returns the 12-bit result scaled: raw << 4 | raw >> 8.
    raws = [0x36A, 0x36B, 0x369, 0x36C]
    machine.ADC.samples = [(r << 4) | (r >> 8) for r in raws]
    b = board_rp2040.make()
    assert b.noise(6) == bytes((0x6A, 0x6B, 0x69, 0x6C, 0x6A, 0x6B))
    assert machine.ADC.made[0].source == 4
    b.noise(2)
    assert len(machine.ADC.made) == 1  # one ADC object per board


def test_rp2040_unique_id_reset_led():
    _power_on(0x20040000, 1)
    b = board_rp2040.make()
    assert b.unique_id() == b"\xe6\x61\x41\x04\x03\x2b\x5c\x2a"
    r = machine.resets
    b.reset()
    assert machine.resets == r + 1
    machine.Pin.made = []
    b.led(True)
    b.led(False)
    assert machine.Pin.made[0].ident == "LED" and machine.Pin.made[0].mode == machine.Pin.OUT
    assert len(machine.Pin.made) == 1 and machine.Pin.made[0].v == 0
    b.led(True)
    assert machine.Pin.made[0].v == 1


def test_esp32_reads_the_top_1_kib_of_rtc_slow_memory():
    mem = _power_on(0x50001C00, 256)
    b = board_esp32.make()
    assert b.name == "esp32"
    got = b.sram_bits(1024)
    assert got == _expected(256)
    assert min(mem.reads[1:]) == 0x50001C00 and max(mem.reads[1:]) == 0x50001FFC
    assert mem.writes == [(0x50001BFC, 0x51444944)]
    _raises(ValueError, b.sram_bits, 1025)
    assert board_esp32.PUF_BYTES == 1024


def test_esp32_cold_boot_needs_power_on_and_no_marker():
    _power_on(0x50001C00, 256)
    b = board_esp32.make()
    assert b.cold_boot() is True
    b.sram_bits(4)
    assert board_esp32.make().cold_boot() is False
    _power_on(0x50001C00, 256, cause=machine.SOFT_RESET)
    assert board_esp32.make().cold_boot() is False


def test_esp32_noise_led_and_id():
    _power_on(0x50001C00, 1)
    machine.ADC.made = []
    machine.Pin.made = []
    machine.ADC.samples = [0xFFF0, 0x1230, 0x0010]
    b = board_esp32.make()
    assert b.noise(3) == b"\xff\x23\x01"
    assert machine.Pin.made[0].ident == 36  # the ADC input pin
    b.led(True)
    assert machine.Pin.made[-1].ident == 2 and machine.Pin.made[-1].v == 1
    assert b.unique_id() == machine.unique_id()


def test_board_json_describes_each_board():
    for name, arch, puf in (("rp2040", "armv6m", 2048), ("esp32", "xtensawin", 1024)):
        with open(REPO + "/boards/" + name + "/board.json") as f:
            meta = json.load(f)
        assert meta["name"] == name
        assert meta["mpy_arch"] == arch
        assert meta["puf_bytes"] == puf
        assert meta["heap"] >= 64 * 1024
    with open(REPO + "/boards/unix/board.json") as f:
        assert json.load(f) == {"name": "unix", "mpy_arch": "host", "heap": 196608}


def _py_files(path):
    for name in os.listdir(path):
        p = path + "/" + name
        if os.stat(p)[0] & 0x4000:
            for q in _py_files(p):
                yield q
        elif name.endswith(".py"):
            yield p


def test_only_board_modules_import_machine():
    offenders = []
    for p in _py_files(REPO + "/firmware"):
        with open(p) as f:
            for line in f:
                s = line.strip()
                if s.startswith("import machine") or s.startswith("from machine"):
                    offenders.append(p)
    assert offenders == [], offenders
