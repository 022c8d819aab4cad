"""Polar code of the fuzzy extractor's profile 3 (firmware/qdid/polar.py): design and failure
bound by exact discrete density evolution of the firmware's decoder.

Code: N = 2048 (x = u F^{(x)11}, F = [[1, 0], [1, 1]], natural order, x_j = XOR of u_i over
i whose bits contain j's), shortened to the first 1785 positions: u_i = 0 for i >= 1785 makes
x_j = 0 there, so those positions are known and never read. K = 131 information positions.

Decoder: successive cancellation with clipped min-sum (LLR in [-31, 31], channel LLR +-1 for
read bits, +31 for shortened ones), f(a, b) = sign(a) sign(b) min(|a|, |b|),
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
REAL = 1785
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
    known = np.zeros(_BINS)
    known[2 * CLIP] = 1.0
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

    return rec([read] * REAL + [known] * (N - REAL))


def error_probabilities(ber: float) -> NDArray[np.float64]:
    """P_i for every synthetic channel (negative or zero LLR)."""
    return np.array([float(d[: CLIP + 1].sum()) for d in densities(ber)])


@lru_cache(maxsize=1)
def information_set() -> tuple[int, ...]:
    """The K positions with the smallest P_i at the design BER, among those that are not
    forced to 0 by shortening."""
    p = error_probabilities(DESIGN_BER)
    p[REAL:] = np.inf
    return tuple(sorted(int(i) for i in np.argsort(p, kind="stable")[:K]))


def info_mask() -> int:
    return sum(1 << i for i in information_set())


def key_failure_bounds(ber: float) -> tuple[float, float]:
    """(lower, upper) bounds on the key failure probability at i.i.d. BER `ber`."""
    p = error_probabilities(ber)[list(information_set())]
    return float(p.max()), float(min(1.0, p.sum()))


def encode(u: int) -> int:
    """x = u F^{(x)11} with bit i of the integers = index i."""
    x = u
    for s in range(11):
        d = 1 << s
        mask = sum(1 << j for j in range(N) if not j & d)
        x ^= (x >> d) & mask
    return x
