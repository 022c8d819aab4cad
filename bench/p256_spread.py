"""P-256 on the device: how far the cost of key generation, signing and ECDH moves with the secret.

Counted, not timed: x86-64 instructions of the MicroPython unix port under valgrind's callgrind,
the firmware compiled to .mpy, the 64 KiB identity heap (as bench/device_identity.py runs it).
One process per operation: after one uncounted run (it warms the interpreter's caches), the
operation runs once per scalar between two calls of a marker builtin, `ord`, and callgrind
dumps its counters at every marker (--dump-before=mp_builtin_ord), so a scalar's figure is the
instructions between its two markers. `gc.collect()` before each run gives every scalar the
same heap to start from; the garbage collections inside the operation are part of its cost.

Scalars (SCALARS): the ones the cost followed before the multiplications were made regular
(1 and 2: mostly the point at infinity; a 64-bit value: leading zero windows; 2^255 and
2^128 + 1: zero windows inside), n - 1 and n - 2 (the windows' last step doubles at n - 2), a
scalar whose comb meets a doubling in its last column, and pseudo-random ones.

Operations (OPERATIONS):
  keygen     public_key(d) over d
  sign       sign_digest_k(D, digest, k) over the nonce k (the key D fixed)
  sign_key   sign_digest(d, digest) over the key d (RFC 6979 derives the nonce)
  ecdh       ecdh(d, Q) over d, Q a public key
  ecdh_x0    ecdh(d, Q0) over d, Q0 the point with x = 0: a short coordinate a peer may choose
  blinding   sign_digest_k(D, digest_i, k) for one k over BLINDINGS digests: the same scalar
             under different randomised coordinates (lam follows the digest), the noise floor
             that the spread over scalars is to be read against

Figures per operation: min, max and mean instructions (M), the spread (max - min) and the
standard deviation in % of the mean, and rp2040_ms = mean x K_RP2040 / 125 MHz (the projection
of bench/device_identity.py; P-256 has no native code). Goal: spread <= GOAL_SPREAD_PCT.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from bench.device_identity import F_RP2040, K_RP2040, _compile_tree
from hil import unixport

GOAL_SPREAD_PCT = 1.0
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
BLINDINGS = 8


def _pseudo(label: str) -> int:
    return int.from_bytes(hashlib.sha256(label.encode()).digest(), "big") % (N - 1) + 1


SCALARS: dict[str, int] = {
    "1": 1,
    "2": 2,
    "64-bit": _pseudo("p256_spread 64") >> 192,
    "2^128+1": (1 << 128) + 1,
    "2^255": 1 << 255,
    "n-2": N - 2,
    "n-1": N - 1,
    "comb doubles": 0xFFFFFFFD00000002FFFFFFFDFFFFFFFDBCE6FAADA7179E84F3B9CAC2FC632551,
    "random a": _pseudo("p256_spread a"),
    "random b": _pseudo("p256_spread b"),
    "random c": _pseudo("p256_spread c"),
}

# A key, a digest and the peer keys the operations use: fixed, public.
SETUP = """
from qdid import p256
D = p256.scalar_from_seed(b"p256_spread key")
DIGEST = b"p256_spread digest 0123456789abc"
PEER = p256.public_key(p256.scalar_from_seed(b"p256_spread peer"))
PEER_X0 = b"\x04" + bytes(32) + bytes.fromhex(
    "66485c780e2f83d72433bd5d84a06bb6541c2af31dae871728bf856a174f93f4"
)
"""

OPERATIONS: dict[str, str] = {
    "keygen": "p256.public_key(a)",
    "sign": "p256.sign_digest_k(D, DIGEST, a)",
    "sign_key": "p256.sign_digest(a, DIGEST)",
    "ecdh": "p256.ecdh(a, PEER)",
    "ecdh_x0": "p256.ecdh(a, PEER_X0)",
}

_RUN = """
import gc
{setup}
ARGS = [{args}]


def op(a):
    {op}


op(ARGS[0])
for a in ARGS:
    gc.collect()
    ord("a")
    op(a)
    ord("b")
"""


class CallgrindMissing(RuntimeError):
    def __str__(self) -> str:
        return "valgrind is not installed: the instruction counts need its callgrind tool"


def compiled(dst: Path) -> Path:
    """The firmware as .mpy under dst/lib, as boards load it."""
    lib = dst / "lib"
    _compile_tree(lib)
    return lib


def count(lib: Path, op: str, args: list[str], setup: str = SETUP) -> list[int]:
    """Instructions of `op` (MicroPython, the argument is `a`) for each argument literal."""
    if shutil.which("valgrind") is None:
        raise CallgrindMissing
    code = _RUN.format(setup=setup, args=", ".join(args), op=op)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cg.out"
        env = dict(os.environ, MICROPYPATH=str(lib), PYTHONHASHSEED="0")
        proc = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                "--dump-before=mp_builtin_ord",
                unixport.micropython(),
                "-X",
                f"heapsize={unixport.HEAP_IDENTITY}",
            ],
            input=code,
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{op} failed under callgrind:\n{proc.stdout}{proc.stderr[-2000:]}")
        # Dump 2i + 1 ends at the marker before run i, dump 2i + 2 at the marker after it.
        counts = []
        for i in range(len(args)):
            text = Path(f"{out}.{2 * i + 2}").read_text()
            m = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.M)
            if not m:
                raise RuntimeError(f"callgrind dump without a total: {out}.{2 * i + 2}")
            counts.append(int(m.group(1)))
        return counts


def spread(counts: list[int]) -> dict[str, float]:
    """The figures of one operation's counts."""
    mean = statistics.fmean(counts)
    return {
        "min_Minstr": min(counts) / 1e6,
        "max_Minstr": max(counts) / 1e6,
        "mean_Minstr": mean / 1e6,
        "spread_pct": 100 * (max(counts) - min(counts)) / mean,
        "sd_pct": 100 * statistics.pstdev(counts) / mean,
        "rp2040_ms": mean * K_RP2040 / F_RP2040 * 1000,
    }


def run() -> dict[str, object]:
    names = list(SCALARS)
    literals = [hex(SCALARS[n]) for n in names]
    figures: dict[str, dict[str, float]] = {}
    counts: dict[str, dict[str, int]] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        lib = compiled(Path(tmp))
        for name, op in OPERATIONS.items():
            got = count(lib, op, literals)
            counts[name] = dict(zip(names, got, strict=True))
            figures[name] = spread(got)
        digests = [repr(hashlib.sha256(b"%d" % i).digest()) for i in range(BLINDINGS)]
        nonce = hex(SCALARS["random a"])
        got = count(lib, f"p256.sign_digest_k(D, a, {nonce})", digests)
        counts["blinding"] = {f"digest {i}": c for i, c in enumerate(got)}
        figures["blinding"] = spread(got)
    for name, fig in figures.items():
        if name == "blinding":
            continue
        verdict = "meets" if fig["spread_pct"] <= GOAL_SPREAD_PCT else "MISSES"
        notes.append(
            f"{name}: spread {fig['spread_pct']:.2f} % of {fig['mean_Minstr']:.1f} M "
            f"instructions over {len(names)} scalars, goal {GOAL_SPREAD_PCT:g} %: {verdict}"
        )
    notes.append(
        f"blinding: one nonce, {BLINDINGS} digests (lam differs): spread "
        f"{figures['blinding']['spread_pct']:.2f} %, sd {figures['blinding']['sd_pct']:.2f} %; "
        "the spread over scalars is of the same size, so it is this noise, not the scalar"
    )
    notes.append(
        f"projection: RP2040 cycles = instructions x {K_RP2040} at 125 MHz "
        "(bench/device_identity.py), uncertain by 2x"
    )
    return {
        "heap_budget_bytes": unixport.HEAP_IDENTITY,
        "goal_spread_pct": GOAL_SPREAD_PCT,
        "scalars": {n: hex(v) for n, v in SCALARS.items()},
        "figures": figures,
        "counts": counts,
        "notes": notes,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
