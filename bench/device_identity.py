"""Device identity costs: reconstruction + seeds (a whole identity boot), keypair, sign, verify.

Measured on the MicroPython Unix port with the firmware compiled to .mpy (as boards run it):
- time per operation (ticks_us, mean of `reps`);
- x86-64 instructions per operation, counted by `valgrind --tool=callgrind` on the micropython
  binary (deterministic, unlike time on a shared machine);
- peak heap: the smallest `-X heapsize` (1 KiB steps) under which the operation still runs,
  which is the truthful figure for a board's fixed heap (gc.mem_alloc() after the fact misses
  transient peaks).

Projection to boards (RP2040 @ 125 MHz, ESP32 @ 240 MHz): target cycles =
x86-64 instructions x K, with K the target cycles per unix-port instruction of the same
MicroPython work. K is an assumption, documented here, until the rig times the same snippets on
real boards:
  RP2040 (Cortex-M0+, Thumb-1, 2-stage pipeline, code from XIP flash with a 16 KiB cache):
    K = 2.0: Thumb-1 needs ~1.6x the instructions of x86-64 for the interpreter loop and the
    mpz digit loops (16-bit digits, 32-bit registers, no 64-bit multiply), at ~1.25 cycles per
    instruction with cache misses.
  ESP32 (Xtensa LX6, 32-bit, windowed registers, 240 MHz, flash cache):
    K = 1.5: ~1.25x instructions, ~1.2 cycles per instruction.
  Uncertainty: a factor of 2 either way. Published board-to-board figures agree on the
  relative speed: one MicroPython benchmark takes 19.8 s on an RP2040 @ 125 MHz and 15.4 s on
  an ESP32 @ 160 MHz (scruss.com, "Parallel MicroPython Benchmarking", 2025), i.e. equal cycles
  per unit of work (2.47 vs 2.46 Gcycles), while the K above make the ESP32 ~1.3x more
  efficient per cycle: read the ESP32 projection as optimistic by up to that much.

Native code (qdid.polar's viper decoder) is machine code, not interpreter work, and has its own
factor. Callgrind puts it in anonymous executable memory (object "???"): those instructions are
counted apart (x86_native_Minstr) and projected with K_NATIVE:
  RP2040: K_NATIVE = 1.6, from the machine code itself: mpy-cross -march=armv6m and -march=x64
    emit the same naive viper code (operands through the stack) with about the same instruction
    count per loop (inner loops of _sc: Thumb 54-173 instructions per iteration against x64
    55-175); weighting Thumb instructions by Cortex-M0+ cycles (loads, stores and taken
    branches 2, the rest 1; the RP2040 multiplier is single-cycle; native code runs from SRAM)
    gives 1.56-1.71 cycles per x64 instruction.
  ESP32: K_NATIVE = 1.2, an estimate: no Xtensa disassembler here; the xtensawin code of _sc is
    2691 bytes (2- and 3-byte instructions) against 2148 for armv6m and 4385 for x64, about the
    same instruction count as x64, at ~1.2 cycles each from IRAM.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench import _callgrind
from hil import unixport

K_RP2040 = 2.0  # target cycles per unix-port x86-64 instruction (see the docstring)
K_ESP32 = 1.5
K_NATIVE_RP2040 = 1.6  # target cycles per x86-64 instruction of native (viper) code
K_NATIVE_ESP32 = 1.2
F_RP2040 = 125e6
F_ESP32 = 240e6
GOALS_RP2040_MS = {"boot_identity": 1000.0, "keypair": 3000.0, "sign": 1500.0}
SEED = "00112233445566778899aabbccddeeff"

_SETUP = """
import time, gc, hashlib
from qdid import p256
d = p256.scalar_from_seed(b"bench-seed-0123456789abcdef")
pub = p256.public_key(d)
dig = hashlib.sha256(b"bench").digest()
sig = p256.sign_digest(d, dig)
"""

_OPS = {
    "keypair": "p256.public_key(p256.scalar_from_seed(b'bench-seed-0123456789abcdef'))",
    "sign": "p256.sign_digest(d, dig)",
    "verify": "assert p256.verify_digest(pub, dig, sig)",
}

# A whole identity boot on the second power-up (reconstruction, health checks, entropy start-up,
# HKDF, the eight seeds, scalar and public key).
_BOOT = """
import time, gc
import board
from qdid import identity
t0 = time.ticks_us()
for _ in range(REPS):
    b = board.make()
    i = identity.boot(b, "data")
    for k in range(8):
        i.seed(k)
    i.wipe()
    b = i = None
print("BENCH boot_identity", time.ticks_diff(time.ticks_us(), t0) / REPS / 1000)
"""


def _compile_tree(dst: Path) -> None:
    """firmware/qdid and the unix board as .mpy, the way boards load them."""
    mc = unixport.mpy_cross_cmd()
    (dst / "qdid").mkdir(parents=True)
    for src in sorted((unixport.FIRMWARE / "qdid").glob("*.py")):
        out = dst / "qdid" / (src.stem + ".mpy")
        subprocess.run([*mc, "-s", f"qdid/{src.name}", "-o", str(out), str(src)], check=True)
    for name in ("board", "silicon"):
        src = unixport.BOARDS / "unix" / f"{name}.py"
        subprocess.run([*mc, "-s", src.name, "-o", str(dst / f"{name}.mpy"), str(src)], check=True)


def _run(
    code: str, lib: Path, cwd: Path, heap: int, callgrind: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MICROPYPATH=str(lib), QLINK_DIE=str(cwd / "die.json"))
    env.pop("QLINK_WARM_BOOT", None)
    cmd = [unixport.micropython(), "-X", f"heapsize={heap}"]
    if callgrind is not None:
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={callgrind}", *cmd]
    return subprocess.run(
        cmd, input=code, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False
    )


def _instructions(out: Path) -> tuple[int, int]:
    """(all instructions, instructions in anonymous executable memory: native code)."""
    total, rows = _callgrind.counts(out)
    return total, sum(n for n, line in rows if line.rstrip().endswith("[???]"))


def _op_code(name: str, reps: int) -> str:
    if name == "boot_identity":
        return _BOOT.replace("REPS", str(reps))
    return _SETUP + (
        f"t0 = time.ticks_us()\nfor _ in range({reps}):\n    {_OPS[name]}\n"
        f"print('BENCH {name}', time.ticks_diff(time.ticks_us(), t0) / {reps} / 1000)\n"
    )


def _baseline_code(name: str) -> str:
    # The same process without the operation: its instructions are subtracted.
    if name == "boot_identity":
        return "import board\nfrom qdid import identity\n"
    return _SETUP


def _min_heap(code: str, lib: Path, cwd: Path) -> int:
    lo, hi = 4 * 1024, 256 * 1024  # lo fails, hi passes
    if _run(code, lib, cwd, hi).returncode != 0:
        raise RuntimeError("operation fails even with a 256 KiB heap")
    while hi - lo > 1024:
        mid = (lo + hi) // 2 // 1024 * 1024
        if _run(code, lib, cwd, mid).returncode == 0:
            hi = mid
        else:
            lo = mid
    return hi


def run(reps: int = 5) -> dict[str, object]:
    figures: dict[str, dict[str, float]] = {}
    notes: list[str] = []
    have_valgrind = shutil.which("valgrind") is not None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lib = root / "lib"
        _compile_tree(lib)
        (root / "die.json").write_text(json.dumps({"seed": SEED}))
        enrol = _run(_op_code("boot_identity", 1), lib, root, unixport.HEAP_IDENTITY)
        if enrol.returncode != 0:
            raise RuntimeError(f"enrolment failed:\n{enrol.stdout}{enrol.stderr}")
        for name in ("boot_identity", "keypair", "sign", "verify"):
            # A boot is a power cycle: one process each; the other operations repeat in one.
            runs = (
                [(_op_code(name, 1), reps)]
                if name == "boot_identity"
                else [(_op_code(name, reps), 1)]
            )
            total = 0.0
            for code, times in runs:
                for _ in range(times):
                    proc = _run(code, lib, root, unixport.HEAP_IDENTITY)
                    if proc.returncode != 0:
                        raise RuntimeError(
                            f"{name} failed in the 64 KiB heap:\n{proc.stdout}{proc.stderr}"
                        )
                    total += float(proc.stdout.split(f"BENCH {name}")[1].split()[0])
            ms = total / (reps if name == "boot_identity" else 1)
            fig: dict[str, float] = {"unix_ms": ms}
            fig["peak_heap_B"] = float(_min_heap(_op_code(name, 1), lib, root))
            if have_valgrind:
                one = root / f"cg.{name}.out"
                base = root / f"cg.{name}.base"
                if _run(_op_code(name, 1), lib, root, unixport.HEAP_IDENTITY, one).returncode != 0:
                    raise RuntimeError(f"{name} failed under callgrind")
                _run(_baseline_code(name), lib, root, unixport.HEAP_IDENTITY, base)
                (all_one, nat_one), (all_base, nat_base) = _instructions(one), _instructions(base)
                native = max(0, nat_one - nat_base)
                interp = all_one - all_base - native
                fig["x86_Minstr"] = (interp + native) / 1e6
                fig["x86_native_Minstr"] = native / 1e6
                rp2040 = interp * K_RP2040 + native * K_NATIVE_RP2040
                esp32 = interp * K_ESP32 + native * K_NATIVE_ESP32
                fig["rp2040_ms"] = rp2040 / F_RP2040 * 1000
                fig["esp32_ms"] = esp32 / F_ESP32 * 1000
            figures[name] = fig
    if have_valgrind:
        for name, goal in GOALS_RP2040_MS.items():
            got = figures[name]["rp2040_ms"]
            verdict = "meets" if got <= goal else "MISSES"
            notes.append(f"{name}: projected RP2040 {got:.0f} ms, goal {goal:.0f} ms: {verdict}")
    else:
        notes.append("valgrind not installed: no instruction counts, no board projection")
    notes.append(
        f"projection: cycles = x86-64 instructions x K (RP2040 K={K_RP2040}, ESP32 K={K_ESP32}; "
        f"native code K={K_NATIVE_RP2040} / {K_NATIVE_ESP32}), uncertain by 2x; "
        "see bench/device_identity.py"
    )
    notes.append(
        "boot_identity includes the unix board's silicon model (sram_bits, noise: ~5 M "
        "instructions) where a real board reads SRAM and an ADC"
    )
    notes.append(
        "peak_heap_B: smallest -X heapsize (1 KiB steps) that runs the operation from .mpy"
    )
    return {
        "heap_budget_bytes": unixport.HEAP_IDENTITY,
        "reps": reps,
        "figures": figures,
        "notes": notes,
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
