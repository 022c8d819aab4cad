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

Bounds (Arikan 2009; Mori and Tanaka 2009): the LLR arithmetic is symmetric (f and g, the clip
and the channel are odd in the sign of the transmitted bit), so the genie-aided LLR of synthetic
channel i, signed towards its true bit, has one distribution whatever the codeword: the all-zero
codeword's, which density evolution of the same clipped min-sum arithmetic computes exactly
(integer LLRs). Only the decision rule is not symmetric: a tie (LLR 0) decodes to 0, right when
u_i = 0 and wrong when u_i = 1. SC fails iff some information bit's genie-aided decision fails
(the first wrong decision is made with correct past decisions), so for every key
  max_i P(L_i < 0) <= P_key <= sum_i P(L_i <= 0)
over the information positions (a tie counts as right in the lower bound and as wrong in the
upper one); `key_failure_bounds` returns these two.
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


def channel(right: float, erased: float, wrong: float) -> Density:
    """The LLR distribution of one code position: +1, 0 and -1 with these probabilities."""
    d = np.zeros(_BINS)
    d[CLIP + 1] = right
    d[CLIP] += erased
    d[CLIP - 1] += wrong
    return d


def densities(ber: float) -> list[Density]:
    """LLR distribution of each of the N synthetic channels u_0..u_{N-1} (all-zero codeword)."""
    if not 0 <= ber <= 1:
        raise ValueError(f"bit error rate must lie in [0, 1], got {ber}")
    return evolve([channel(0, 1, 0)] * PUNCTURED + [channel(1 - ber, 0, ber)] * REAL)


def evolve(positions: list[Density]) -> list[Density]:
    """LLR distribution of each synthetic channel u_0..u_{N-1} under the all-zero codeword, from
    the channel LLR distribution of each code position x_0..x_{N-1} (N a power of 2)."""
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

    return rec(list(positions))


def evolve_uniform(position: Density, log_n: int) -> list[Density]:
    """evolve() for a code whose 2^log_n positions all have the LLR distribution `position`,
    level by level: both inputs of every f and g are then i.i.d. with one distribution, so
    g is a convolution folded at the clip and f follows from the tails of the magnitudes
    (P(min(|a|, |b|) >= v, same sign) = T+(v)^2 + T-(v)^2, opposite signs 2 T+(v) T-(v)).
    Channel i of the result is the one evolve() lists at i; ~100x faster."""
    level = np.asarray(position, dtype=np.float64)[None, :]
    for _ in range(log_n):
        m = level.shape[0]
        # g: the distribution of a + b, clipped to [-CLIP, CLIP].
        conv = np.zeros((m, 2 * _BINS - 1))
        for k in range(_BINS):
            conv[:, k : k + _BINS] += level[:, k : k + 1] * level
        plus = conv[:, CLIP : CLIP + _BINS].copy()
        plus[:, 0] += conv[:, :CLIP].sum(axis=1)
        plus[:, -1] += conv[:, CLIP + _BINS :].sum(axis=1)
        # f: sign(a) sign(b) min(|a|, |b|); 0 if either is 0.
        pos = level[:, CLIP + 1 :]  # P(+v), v = 1..CLIP
        neg = level[:, CLIP - 1 :: -1]  # P(-v), v = 1..CLIP
        tp = np.cumsum(pos[:, ::-1], axis=1)[:, ::-1]  # P(a >= v)
        tn = np.cumsum(neg[:, ::-1], axis=1)[:, ::-1]  # P(a <= -v)
        zero = np.zeros((m, 1))
        tp1 = np.hstack([tp[:, 1:], zero])  # P(a >= v + 1)
        tn1 = np.hstack([tn[:, 1:], zero])
        # The differences of the squared tails, written as sums of positive terms: no
        # cancellation in the 1e-30 tails the bounds are made of.
        minus = np.zeros((m, _BINS))
        minus[:, CLIP + 1 :] = pos * (tp + tp1) + neg * (tn + tn1)
        minus[:, CLIP - 1 :: -1] = 2 * (tp * neg + tn1 * pos)
        minus[:, CLIP] = level[:, CLIP] * (2 - level[:, CLIP])
        nxt = np.empty((2 * m, _BINS))
        nxt[0::2] = minus
        nxt[1::2] = plus
        level = nxt
    return list(level)


def error_probabilities(ber: float) -> NDArray[np.float64]:
    """P(L_i <= 0) for every synthetic channel (a tie counted as an error)."""
    return tie_error_probabilities(densities(ber))[1]


def tie_error_probabilities(
    dens: list[Density],
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(P(L_i < 0), P(L_i <= 0)) for every synthetic channel."""
    below = np.array([float(d[:CLIP].sum()) for d in dens])
    upto = np.array([float(d[: CLIP + 1].sum()) for d in dens])
    return below, upto


def bounds(dens: list[Density], info: tuple[int, ...]) -> tuple[float, float]:
    """(lower, upper) bounds on P_key that hold for every key: max_i P(L_i < 0) and
    sum_i P(L_i <= 0) over the information positions."""
    below, upto = tie_error_probabilities(dens)
    idx = list(info)
    return float(below[idx].max()), float(min(1.0, upto[idx].sum()))


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
    """The firmware's _R0 constant for this code (rate0_table_for)."""
    return rate0_table_for(information_set(), N)


def rate0_table_for(information: tuple[int, ...], length: int) -> bytes:
    """Bit n (byte n >> 3, bit n & 7) set iff node n of the decoding tree has no information
    leaf below it (root 1, children 2n and 2n + 1, leaf of position i = length + i): the table
    qdid.polarsc's decoder skips rate-0 subtrees by."""
    info = set(information)
    flags = [False] * (2 * length)
    for i in range(length):
        flags[length + i] = i not in info
    for n in range(length - 1, 0, -1):
        flags[n] = flags[2 * n] and flags[2 * n + 1]
    out = bytearray(2 * length // 8)
    for n, rate0 in enumerate(flags):
        if rate0 and n:
            out[n >> 3] |= 1 << (n & 7)
    return bytes(out)


def key_failure_bounds(ber: float) -> tuple[float, float]:
    """(lower, upper) bounds on the key failure probability at i.i.d. BER `ber`, for every
    key."""
    return bounds(densities(ber), information_set())


def encode(u: int, log_n: int = LOG_N) -> int:
    """x = u F^{(x)log_n} with bit i of the integers = index i (all 2^log_n positions)."""
    x = u
    for s in range(log_n):
        d = 1 << s
        mask = sum(1 << j for j in range(1 << log_n) if not j & d)
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
