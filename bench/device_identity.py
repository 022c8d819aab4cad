"""Device identity costs on the MicroPython Unix port: reconstruction + seeds, keypair, sign,
verify, with the peak heap of each, measured inside one micropython process per figure so that
heap peaks do not mix. Projection to real boards is the issue of a later calibration; this
reports the Unix-port figures and the heap they need."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hil import unixport
from hil.emulated import EmulatedBoard

# Each snippet prints one line: "<name> <ms per op> <peak heap bytes>".
_CRYPTO = """
import time, gc
from qdid import p256
import hashlib
def bench(name, fn, n):
    gc.collect()
    t0 = time.ticks_us()
    for _ in range(n):
        fn()
    dt = time.ticks_diff(time.ticks_us(), t0) / n / 1000
    print("BENCH", name, "%.2f" % dt, gc.mem_alloc())
d = p256.scalar_from_seed(b"bench-seed-0123456789abcdef")
pub = p256.public_key(d)
dig = hashlib.sha256(b"bench").digest()
sig = p256.sign_digest(d, dig)
bench("keypair", lambda: p256.public_key(d), REPS)
bench("sign", lambda: p256.sign_digest(d, dig), REPS)
bench("verify", lambda: p256.verify_digest(pub, dig, sig), REPS)
"""

_IDENTITY = """
import time, gc
import board
from qdid import identity
b = board.make()
t0 = time.ticks_us()
i = identity.boot(b)
ms = time.ticks_diff(time.ticks_us(), t0) / 1000
print("BENCH", "boot_identity", "%.2f" % ms, gc.mem_alloc())
"""


def _parse(out: str) -> dict[str, dict[str, float]]:
    figures: dict[str, dict[str, float]] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "BENCH":
            figures[parts[1]] = {"ms": float(parts[2]), "heap_alloc_B": float(parts[3])}
    return figures


def run(reps: int = 5) -> dict[str, object]:
    heap = unixport.HEAP_IDENTITY
    proc = unixport.run_code(_CRYPTO.replace("REPS", str(reps)), heap=heap, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"crypto bench failed:\n{proc.stdout}{proc.stderr}")
    figures = _parse(proc.stdout)
    with tempfile.TemporaryDirectory() as tmp:
        board = EmulatedBoard(Path(tmp), "bench", heap=heap)
        board.flash({"server": "https://localhost:1", "root_ca": "ca.der"}, b"")
        board.run_script(_IDENTITY)  # first boot: enrolment
        figures.update(_parse(board.run_script(_IDENTITY)))  # second boot: reconstruction
    return {
        "heap_budget_bytes": heap,
        "reps": reps,
        "figures": figures,
        "notes": [f"MicroPython Unix port, heap budget {heap} B; identity boot from .mpy"],
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
