"""Polar code of the fuzzy extractor's profile 4 (firmware/qdid/polar.py): design and failure
bound by exact discrete density evolution of the firmware's decoder.

Code: N = 2048 (x = u F^{(x)11}, F = [[1, 0], [1, 1]], natural order, x_j = XOR of u_i over
i whose bits contain j's), punctured at the first P = 263 positions (quasi-uniform puncturing in
natural order: Niu, Chen and Lin, "Beyond turbo codes: rate-compatible punctured polar codes",
ICC 2013): the response is read at positions 263..2047 (1785 bits), the punctured positions are
never read and enter the decoder with LLR 0. u_i for i < P only reaches punctured positions
(x_j with j a sub-pattern of i, so j <= i < P): those channels carry nothing and are frozen.
K = 131 information positions, the best at the design BER.

Decoder: successive cancellation with clipped min-sum (LLR in [-31, 31], channel LLR +-1 for
read bits, 0 for punctured ones), f(a, b) = sign(a) sign(b) min(|a|, |b|),
g(a, b, s) = clip(b + (1 - 2 s) a), decision u = 1 iff LLR < 0 (tie -> 0).

Bound (Arikan 2009; Mori and Tanaka 2009): the decoder is symmetric and the channel is a BSC, so
its failure does not depend on the codeword; under the all-zero codeword the LLR of every
synthetic channel has an exactly computable integer distribution (density evolution of the same
clipped min-sum arithmetic). SC fails iff some information bit's genie-aided decision fails, so
  max_i P_i <= P_key <= sum_i P_i over the information positions,
with P_i = P(LLR_i < 0) + P(LLR_i = 0) (ties counted as errors whatever the decoder does).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

N = 2048
LOG_N = 11
REAL = 1785  # positions read from the SRAM: PUNCTURED..N-1
PUNCTURED = N - REAL  # 263: positions 0..262 are never read
K = 131
CLIP = 31
DESIGN_BER = 0.20

_V = np.arange(-CLIP, CLIP + 1)
_A, _B = np.meshgrid(_V, _V, indexing="ij")
_FMAP = (np.sign(_A) * np.sign(_B) * np.minimum(abs(_A), abs(_B)) + CLIP).ravel().astype(np.intp)
_GMAP = (np.clip(_A + _B, -CLIP, CLIP) + CLIP).ravel().astype(np.intp)
_BINS = 2 * CLIP + 1

Density = NDArray[np.float64]


def _combine(table: NDArray[np.intp], a: Density, b: Density) -> Density:
    counts = np.bincount(table, weights=np.outer(a, b).ravel(), minlength=_BINS)
    return np.asarray(counts, dtype=np.float64)


def densities(ber: float) -> list[Density]:
    """LLR distribution of each of the N synthetic channels u_0..u_{N-1} (all-zero codeword)."""
    if not 0 <= ber <= 1:
        raise ValueError(f"bit error rate must lie in [0, 1], got {ber}")
    read = np.zeros(_BINS)
    read[CLIP + 1] = 1 - ber
    read[CLIP - 1] += ber
    punctured = np.zeros(_BINS)
    punctured[CLIP] = 1.0
    cache: dict[tuple[str, bytes, bytes], Density] = {}

    def comb(kind: str, a: Density, b: Density) -> Density:
        key = (kind, a.tobytes(), b.tobytes())
        if key not in cache:
            cache[key] = _combine(_FMAP if kind == "f" else _GMAP, a, b)
        return cache[key]

    def rec(d: list[Density]) -> list[Density]:
        if len(d) == 1:
            return d
        h = len(d) // 2
        minus = [comb("f", d[j], d[j + h]) for j in range(h)]
        plus = [comb("g", d[j], d[j + h]) for j in range(h)]
        return rec(minus) + rec(plus)

    return rec([punctured] * PUNCTURED + [read] * REAL)


def error_probabilities(ber: float) -> NDArray[np.float64]:
    """P_i for every synthetic channel (negative or zero LLR)."""
    return np.array([float(d[: CLIP + 1].sum()) for d in densities(ber)])


@lru_cache(maxsize=1)
def information_set() -> tuple[int, ...]:
    """The K positions with the smallest P_i at the design BER, among those not frozen by
    puncturing (u_i, i < PUNCTURED)."""
    p = error_probabilities(DESIGN_BER)
    p[:PUNCTURED] = np.inf
    return tuple(sorted(int(i) for i in np.argsort(p, kind="stable")[:K]))


def info_mask() -> int:
    return sum(1 << i for i in information_set())


def rate0_table() -> bytes:
    """Bit n (byte n >> 3, bit n & 7) set iff node n of the decoding tree has no information
    leaf below it (root 1, children 2n and 2n + 1, leaf of position i = N + i): the firmware's
    _R0 constant."""
    info = set(information_set())
    flags = [False] * (2 * N)
    for i in range(N):
        flags[N + i] = i not in info
    for n in range(N - 1, 0, -1):
        flags[n] = flags[2 * n] and flags[2 * n + 1]
    out = bytearray(2 * N // 8)
    for n, rate0 in enumerate(flags):
        if rate0 and n:
            out[n >> 3] |= 1 << (n & 7)
    return bytes(out)


def key_failure_bounds(ber: float) -> tuple[float, float]:
    """(lower, upper) bounds on the key failure probability at i.i.d. BER `ber`."""
    p = error_probabilities(ber)[list(information_set())]
    return float(p.max()), float(min(1.0, p.sum()))


def encode(u: int) -> int:
    """x = u F^{(x)11} with bit i of the integers = index i (all N positions)."""
    x = u
    for s in range(LOG_N):
        d = 1 << s
        mask = sum(1 << j for j in range(N) if not j & d)
        x ^= (x >> d) & mask
    return x


def read_dimension() -> int:
    """GF(2) rank of the generator rows of the information positions restricted to the read
    positions: the dimension of the code the helper is an offset of (K if no two messages give
    the same read codeword)."""
    rows = [encode(1 << i) >> PUNCTURED for i in information_set()]
    rank = 0
    pivots: dict[int, int] = {}  # leading bit -> reduced row
    for row in rows:
        while row:
            top = row.bit_length() - 1
            if top not in pivots:
                pivots[top] = row
                rank += 1
                break
            row ^= pivots[top]
    return rank
