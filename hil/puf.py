"""Power-up reads of emulated dies (the unix board's silicon model) and Monte Carlo runs of the
firmware's fuzzy extractor, both on the MicroPython Unix port. Real boards come through the rig
later; their reads feed the same host.puf.analysis.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from hil import unixport


class PufRunError(RuntimeError):
    """The MicroPython side of a PUF run failed; the message carries its output."""


_READS = """
import silicon, binascii
die = silicon.Die(PARAMS)
for _ in range(NREADS):
    print("R", binascii.hexlify(die.power_up(NBYTES)).decode())
"""

# i.i.d. errors with rate BER_Q16 / 65536 on the 1785 used bits of a random response, then the
# firmware decoder; one line per batch: "MC <trials> <failures>".
_MONTE_CARLO = """
import os
from qdid import MODULE as fuzzy
thr = BER_Q16
fails = 0
for t in range(TRIALS):
    resp = bytearray(os.urandom(fuzzy.RESPONSE_LEN))
    helper, secret = fuzzy.enrol(resp, os.urandom(fuzzy.KEY_LEN))
    r = os.urandom(2 * fuzzy.RAW_BITS)
    for b in range(fuzzy.RAW_BITS):
        if (r[2 * b] << 8 | r[2 * b + 1]) < thr:
            q = b + 7
            resp[223 - (q >> 3)] ^= 1 << (q & 7)
    try:
        if fuzzy.reproduce(resp, helper) != secret:
            raise SystemExit("a reconstruction returned another secret")
    except fuzzy.ReconstructionError:
        fails += 1
print("MC", TRIALS, fails)
"""


def die_seed(base: str, index: int) -> str:
    """The hex seed of emulated die `index` of a campaign named `base` (deterministic)."""
    return hashlib.sha256(f"qlink/puf/{base}/{index}".encode()).hexdigest()[:32]


def collect(
    dies: int,
    reads: int,
    nbytes: int = 224,
    *,
    campaign: str = "report",
    params: dict[str, float] | None = None,
) -> NDArray[np.uint8]:
    """(dies, reads, nbytes) power-up reads of emulated dies, one MicroPython run per die."""
    if dies < 1 or reads < 1 or not 0 < nbytes <= 8192:
        raise ValueError("need >= 1 die, >= 1 read and 1..8192 bytes per read")
    out = np.zeros((dies, reads, nbytes), dtype=np.uint8)
    for d in range(dies):
        p: dict[str, object] = {"seed": die_seed(campaign, d)}
        p.update(params or {})
        code = (
            _READS.replace("PARAMS", json.dumps(p))
            .replace("NREADS", str(reads))
            .replace("NBYTES", str(nbytes))
        )
        proc = unixport.run_code(code, heap=256 * 1024, timeout=600)
        if proc.returncode != 0:
            raise PufRunError(f"die {d}: silicon model failed:\n{proc.stdout}{proc.stderr}")
        rows = [line[2:] for line in proc.stdout.splitlines() if line.startswith("R ")]
        if len(rows) != reads:
            raise PufRunError(f"die {d}: expected {reads} reads, got {len(rows)}")
        for r, hexrow in enumerate(rows):
            out[d, r] = np.frombuffer(bytes.fromhex(hexrow), dtype=np.uint8)
    return out


PROFILES = {2: "fuzzy", 4: "polar"}  # helper profile ID -> firmware module (qdid.<name>)


def monte_carlo(ber: float, trials: int, profile: int = 4) -> tuple[int, int]:
    """(trials, failures) of the firmware decoder of `profile` under i.i.d. errors of rate
    `ber`."""
    if not 0 <= ber <= 1 or trials < 1:
        raise ValueError("ber in [0, 1] and trials >= 1")
    if profile not in PROFILES:
        raise ValueError(f"unknown helper profile {profile}; have {sorted(PROFILES)}")
    code = (
        _MONTE_CARLO.replace("MODULE", PROFILES[profile])
        .replace("BER_Q16", str(round(ber * 65536)))
        .replace("TRIALS", str(trials))
    )
    with tempfile.TemporaryDirectory() as tmp:
        # A larger heap than a board's: the harness draws 3.5 KiB of noise per trial; the
        # decoders' own heap is measured by bench/device_identity.py.
        proc = unixport.run_code(code, heap=256 * 1024, cwd=Path(tmp), timeout=3600)
    if proc.returncode != 0:
        raise PufRunError(f"Monte Carlo run failed:\n{proc.stdout}{proc.stderr}")
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "MC":
            return int(parts[1]), int(parts[2])
    raise PufRunError(f"Monte Carlo run printed no result:\n{proc.stdout}")
