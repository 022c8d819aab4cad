"""Profile 5 (firmware/qdid/debias.py, the enrolment default): von Neumann debiasing of SRAM
cell pairs, then a code-offset fuzzy extractor with a polar code of length 1024. Design,
entropy accounting and failure bounds (docs/identity.md, sections 2 and 3).

Pairs: cell pair t*8 + k is bit k (MSB first) of response bytes 2t and 2t + 1 (the same bit lane
of two neighbouring bytes); 2560 pairs in 640 bytes (5120 raw bits). Enrolment keeps the first
N = 1024 pairs whose two cells read differently (classic von Neumann selection: Maes, van der
Leest, van der Sluis and Willems, "Secure key generation from biased PUFs", CHES 2015); the
selection is public (a bitmap in the helper), the first cell's value u is the retained bit, and
both cells of a retained pair vote on it at reconstruction (the pair-output form of the same
paper: the second cell holds NOT u).

Entropy: with the two cells of a pair independent and equally biased (exchangeable), the
patterns 01 and 10 are equally likely whatever the bias, so every retained bit is uniform and
independent of the selection; the offset w = u XOR c (c uniform over a code of dimension K on
the N retained positions) then leaves H~inf(U | selection, W) = K (Dodis, Ostrovsky, Reyzin and
Smith, SIAM J. Comput. 2008, lemma 2.2, with H_inf(U) = N). If the two cells of a pair had
biases b and b + d, a retained bit would be 1 with probability b(1 - b - d) / (b(1 - b - d) +
(1 - b)(b + d)) and the bound becomes N h_inf - (N - K): `residual_entropy(bias, mismatch)`.

Effective channel of a retained bit (derived in docs/identity.md): each cell has a one
probability of its own and its reads are i.i.d. given it; the population has P(1) = b and a
read-to-read BER p = 2 E[pi (1 - pi)]. A cell that read 0 at enrolment reads 1 later with
q0 = E[pi (1 - pi)] / (1 - b) = p / (2 (1 - b)); one that read 1 flips with q1 = p / (2 b). A
retained pair holds one cell of each kind, so its two votes are wrong together with q0 q1
(LLR -1), split with q0 + q1 - 2 q0 q1 (LLR 0), right together otherwise (LLR +1), for either
value of u: a symmetric channel, whose density evolution through the firmware's decoder gives
the bounds (`key_failure_bounds`).

That split of p between q0 and q1 holds where reads are i.i.d. given the cell (fixed
conditions). A die enrolled at one temperature and read at another may split its errors
otherwise, subject only to (1 - b) q0 + b q1 = p; `worst_key_failure` takes the largest union
bound over every such split, the figure the report and the documents quote.
"""

from __future__ import annotations

from functools import lru_cache
from math import exp, lgamma, log, log2

import numpy as np

from host.puf import polar

RESPONSE_BYTES = 640  # SRAM bytes profile 5 reads
RAW_BITS = 8 * RESPONSE_BYTES  # 5120 cells
PAIRS = RAW_BITS // 2  # 2560
N = 1024  # retained pairs = polar code length
LOG_N = 10
K = 131  # code dimension: key bits
CLIP = polar.CLIP
SELECTION_BYTES = PAIRS // 8  # 320: one bit per pair
OFFSET_BYTES = N // 8  # 128
HELPER_BYTES = 4 + SELECTION_BYTES + OFFSET_BYTES + 16  # 468
# Enrolment refuses a read whose share of ones lies outside this window (the firmware's
# _SHARE_MIN_PCT / _SHARE_MAX_PCT).
WINDOW = (0.38, 0.62)
# The population biases real SRAM shows, which the design must serve (every die in this range
# passes the window except with probability refusal_probability(0.42)).
SUPPORTED = (0.42, 0.58)
DESIGN_BER = 0.20
DESIGN_BIAS = 0.38  # the window's edge: the worst channel an enrolled die can have


def _check(ber: float, bias: float) -> None:
    if not 0 < bias < 1:
        raise ValueError(f"bias must lie in (0, 1), got {bias}")
    if not 0 <= ber <= 2 * min(bias, 1 - bias):
        raise ValueError(
            f"bit error rate must lie in [0, {2 * min(bias, 1 - bias):.3f}] at bias {bias} "
            f"(a cell cannot flip with probability above 1), got {ber}"
        )


def cell_error_rates(ber: float, bias: float) -> tuple[float, float]:
    """(q0, q1): the flip probabilities of a cell that read 0 / 1 at enrolment, for a
    population with read-to-read BER `ber` and P(1) = `bias`."""
    _check(ber, bias)
    return ber / (2 * (1 - bias)), ber / (2 * bias)


def split_channel(q0: float, q1: float) -> tuple[float, float, float]:
    """(right, erased, wrong): the LLR +1 / 0 / -1 probabilities of a retained pair whose cells
    flip with q0 (the one that read 0) and q1 (the one that read 1)."""
    if not (0 <= q0 <= 1 and 0 <= q1 <= 1):
        raise ValueError(f"flip probabilities must lie in [0, 1], got {q0}, {q1}")
    wrong = q0 * q1
    erased = q0 + q1 - 2 * wrong
    return 1 - erased - wrong, erased, wrong


def symbol_channel(ber: float, bias: float) -> tuple[float, float, float]:
    """(right, erased, wrong) of a retained pair at read-to-read BER `ber` and bias `bias`."""
    return split_channel(*cell_error_rates(ber, bias))


def densities(ber: float, bias: float) -> list[polar.Density]:
    """LLR distribution of each synthetic channel u_0..u_1023 (all-zero codeword)."""
    return polar.evolve_uniform(polar.channel(*symbol_channel(ber, bias)), LOG_N)


@lru_cache(maxsize=1)
def information_set() -> tuple[int, ...]:
    """The K positions with the smallest P(L_i <= 0) at the design point."""
    _, p = polar.tie_error_probabilities(densities(DESIGN_BER, DESIGN_BIAS))
    return tuple(sorted(int(i) for i in np.argsort(p, kind="stable")[:K]))


def info_mask() -> int:
    return sum(1 << i for i in information_set())


def rate0_table() -> bytes:
    """The firmware's _R0 constant for this code."""
    return polar.rate0_table_for(information_set(), N)


@lru_cache(maxsize=256)
def key_failure_bounds(ber: float, bias: float = 0.5) -> tuple[float, float]:
    """(lower, upper) bounds on the key failure probability, for every key, at read-to-read
    BER `ber` of a die population with P(1) = `bias` (reads i.i.d. given the cell)."""
    return polar.bounds(densities(ber, bias), information_set())


@lru_cache(maxsize=4096)
def split_failure_bound(q0: float, q1: float) -> float:
    """The union bound on the key failure with cell flip probabilities q0 and q1."""
    dens = polar.evolve_uniform(polar.channel(*split_channel(q0, q1)), LOG_N)
    return polar.bounds(dens, information_set())[1]


@lru_cache(maxsize=256)
def worst_key_failure(ber: float, bias: float = 0.5) -> tuple[float, float]:
    """(upper bound, q0 where it is reached): the largest union bound over every split of the
    read-to-read BER between the cells that read 0 (q0) and 1 (q1) at enrolment,
    (1 - bias) q0 + bias q1 = ber. A grid of 24 splits, then a golden-section search around
    its best point (the bound is one hump in q0: tests/host/test_puf_debias.py checks it)."""
    _check(ber, bias)
    lo = max(0.0, (ber - bias) / (1 - bias))  # q1 <= 1
    hi = min(1.0, ber / (1 - bias))  # q1 >= 0

    def at(q0: float) -> float:
        q1 = min(1.0, max(0.0, (ber - (1 - bias) * q0) / bias))
        return split_failure_bound(round(q0, 12), round(q1, 12))

    steps = 24
    grid = [lo + (hi - lo) * i / steps for i in range(steps + 1)]
    best = max(range(steps + 1), key=lambda i: at(grid[i]))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, steps)]
    g = (5**0.5 - 1) / 2
    for _ in range(20):
        c, d = b - g * (b - a), a + g * (b - a)
        if at(c) >= at(d):
            b = d
        else:
            a = c
    top = max((grid[best], (a + b) / 2), key=at)
    return max(at(top), key_failure_bounds(ber, bias)[1]), top


def retained_one_probability(bias: float, mismatch: float = 0.0) -> float:
    """P(u = 1 | the pair was selected) for cells with P(1) = bias (first) and bias + mismatch
    (second)."""
    b1, b2 = bias, bias + mismatch
    if not (0 < b1 < 1 and 0 < b2 < 1):
        raise ValueError(f"bias and bias + mismatch must lie in (0, 1), got {b1}, {b2}")
    one = b1 * (1 - b2)
    return one / (one + (1 - b1) * b2)


def residual_entropy(bias: float, mismatch: float = 0.0) -> dict[str, float]:
    """Bits of the secret an adversary holding the helper data (selection and offset) does not
    know: N h(u) - (N - K) (Shannon) and N h_inf(u) - (N - K) (min-entropy), h of a retained
    bit."""
    q = retained_one_probability(bias, mismatch)
    h = -q * log2(q) - (1 - q) * log2(1 - q) if 0 < q < 1 else 0.0
    hmin = -log2(max(q, 1 - q))
    return {
        "shannon_bits": max(0.0, N * h - (N - K)),
        "min_entropy_bits": max(0.0, N * hmin - (N - K)),
    }


def _log_pmf(n: int, i: int, p: float) -> float:
    return lgamma(n + 1) - lgamma(i + 1) - lgamma(n - i + 1) + i * log(p) + (n - i) * log(1 - p)


def binomial_cdf(n: int, k: int, p: float) -> float:
    """P(Bin(n, p) <= k), summed term by term (every term positive: no cancellation)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0:
        return 1.0
    if p >= 1:
        return 0.0
    return min(1.0, sum(exp(_log_pmf(n, i, p)) for i in range(k + 1)))


def pair_yield(bias: float) -> float:
    """Probability that a pair's two cells read differently: 2 b (1 - b)."""
    return 2 * bias * (1 - bias)


def shortfall_probability(bias: float) -> float:
    """Probability that fewer than N of the 2560 pairs differ (enrolment refuses the die)."""
    return binomial_cdf(PAIRS, N - 1, pair_yield(bias))


def window_counts() -> tuple[int, int]:
    """(least, most) ones in a 5120-bit read that enrolment accepts: the firmware compares
    ones * 100 with pct * 5120."""
    lo_pct, hi_pct = round(WINDOW[0] * 100), round(WINDOW[1] * 100)
    least = -(-lo_pct * RAW_BITS // 100)
    most = hi_pct * RAW_BITS // 100
    return least, most


def refusal_probability(bias: float) -> float:
    """Probability that a die of population bias `bias` reads a share of ones outside the
    window at enrolment (cells i.i.d.)."""
    least, most = window_counts()
    below = binomial_cdf(RAW_BITS, least - 1, bias)
    above = binomial_cdf(RAW_BITS, RAW_BITS - most - 1, 1 - bias)
    return min(1.0, below + above)


def in_window(share: float) -> bool:
    return WINDOW[0] <= share <= WINDOW[1]


def targets_met(bias: float) -> bool:
    """Both failure targets (<= 1e-9 at 15 %, <= 1e-6 at 20 %) by the worst-split bounds."""
    return worst_key_failure(0.15, bias)[0] <= 1e-9 and worst_key_failure(0.20, bias)[0] <= 1e-6


def bias_margin() -> float:
    """The smallest bias (<= 0.5) at which both targets still hold, to 1e-3 (the figures are
    symmetric about 0.5 and worsen away from it)."""
    lo, hi = 0.2, 0.5  # lo misses, hi meets
    if targets_met(lo):
        return lo
    while hi - lo > 1e-3:
        mid = round((lo + hi) / 2, 6)
        if targets_met(mid):
            hi = mid
        else:
            lo = mid
    return hi
