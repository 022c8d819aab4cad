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


# Profile 5: each trial draws a fresh response whose cells read 1 with P1_Q16 / 65536 (the
# population bias), enrols it, then flips a cell that read 0 with Q0_Q16 / 65536 and one that
# read 1 with Q1_Q16 / 65536 (a read-to-read BER p at that bias: q0 = p / (2 (1 - b)),
# q1 = p / (2 b), host/puf/debias.py); "MC <trials> <failures> <refused>" (refused: enrolment
# turned the response down, not counted as a trial).
_MONTE_CARLO_DEBIAS = """
import os
from qdid import debias
p1 = P1_Q16
t0 = Q0_Q16
t1 = Q1_Q16
n = debias.RESPONSE_LEN
fails = 0
refused = 0
done = 0
while done < TRIALS:
    resp = bytearray(n)
    r = os.urandom(2 * 8 * n)
    for b in range(8 * n):
        if (r[2 * b] << 8 | r[2 * b + 1]) < p1:
            resp[b >> 3] |= 1 << (b & 7)
    try:
        helper, secret = debias.enrol(resp, os.urandom(debias.KEY_LEN))
    except debias.DieBiasError:
        refused += 1
        continue
    done += 1
    r = os.urandom(2 * 8 * n)
    for b in range(8 * n):
        t = t1 if (resp[b >> 3] >> (b & 7)) & 1 else t0
        if (r[2 * b] << 8 | r[2 * b + 1]) < t:
            resp[b >> 3] ^= 1 << (b & 7)
    try:
        if debias.reproduce(resp, helper) != secret:
            raise SystemExit("a reconstruction returned another secret")
    except debias.ReconstructionError:
        fails += 1
print("MC", TRIALS, fails, refused)
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


# helper profile ID -> firmware module (qdid.<name>)
PROFILES = {2: "fuzzy", 4: "polar", 5: "debias"}


def monte_carlo(ber: float, trials: int, profile: int = 4, bias: float = 0.5) -> tuple[int, int]:
    """(trials, failures) of the firmware decoder of `profile` under i.i.d. errors of rate
    `ber` (profiles 2 and 4: uniform responses; profile 5: cells with P(1) = `bias`, each
    flipping at the rate its enrolled value gives, host/puf/debias.py)."""
    if not 0 <= ber <= 1 or trials < 1:
        raise ValueError("ber in [0, 1] and trials >= 1")
    if profile not in PROFILES:
        raise ValueError(f"unknown helper profile {profile}; have {sorted(PROFILES)}")
    if profile == 5:
        from host.puf.debias import cell_error_rates

        q0, q1 = cell_error_rates(ber, bias)
        code = (
            _MONTE_CARLO_DEBIAS.replace("P1_Q16", str(round(bias * 65536)))
            .replace("Q0_Q16", str(round(q0 * 65536)))
            .replace("Q1_Q16", str(round(q1 * 65536)))
            .replace("TRIALS", str(trials))
        )
    elif bias != 0.5:
        raise ValueError("profiles 2 and 4 are simulated on unbiased responses only")
    else:
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
        if len(parts) in (3, 4) and parts[0] == "MC":
            return int(parts[1]), int(parts[2])
    raise PufRunError(f"Monte Carlo run printed no result:\n{proc.stdout}")
