"""Residual entropy of the secret given the public helper data (docs/identity.md, "Entropy").

Profile 2 publishes w = x XOR rep7(c), c uniform over BCH(255, 131) (131 bits). The helper
blocks w_i (7 bits each) depend on c only through c_i and on independent response cells, so
  Shannon:      H(C | W) >= 131 - sum_i I(c_i; w_i)
  min-entropy:  H~inf(C | W) >= 131 - sum_i log2( sum_w max_c P(w_i = w | c_i = c) )
(the second replaces the code by all of {0,1}^255 in the guessing sum, which can only raise the
adversary's success). Both equal 131 at bias 0.5; the response cells are i.i.d. with
P(1) = bias in this accounting (the silicon model's assumption; measured dies are checked by
host.puf.analysis).
"""

from __future__ import annotations

from math import comb, log2

from host.puf.failure import PROFILE_2, Profile


def _block_probs(r: int, bias: float) -> list[tuple[int, float, float]]:
    """(multiplicity, P(w | c = 0), P(w | c = 1)) per Hamming weight of an r-bit helper block."""
    out = []
    for k in range(r + 1):
        p0 = bias**k * (1 - bias) ** (r - k)  # w = x: k ones in x
        p1 = bias ** (r - k) * (1 - bias) ** k  # w = x XOR 1..1
        out.append((comb(r, k), p0, p1))
    return out


def block_leak_shannon(r: int, bias: float) -> float:
    """I(c_i; w_i) in bits for a uniform code bit under an r-fold repetition offset."""
    if not 0 < bias < 1:
        return 1.0
    total = 0.0
    for mult, p0, p1 in _block_probs(r, bias):
        pw = 0.5 * (p0 + p1)
        for pc in (p0, p1):
            if pc > 0:
                total += mult * 0.5 * pc * log2(pc / pw)
    return total


def block_leak_min(r: int, bias: float) -> float:
    """log2 of sum_w max_c P(w | c): the min-entropy leak of one block, in bits."""
    if not 0 < bias < 1:
        return 1.0
    return log2(sum(mult * max(p0, p1) for mult, p0, p1 in _block_probs(r, bias)))


def residual_entropy(bias: float, profile: Profile = PROFILE_2) -> dict[str, float]:
    """Bits of the secret an adversary holding the helper data does not know, two ways."""
    if not 0 <= bias <= 1:
        raise ValueError(f"bias must lie in [0, 1], got {bias}")
    n, k, r = profile.length, profile.dimension, profile.repetition
    return {
        "shannon_bits": max(0.0, k - n * block_leak_shannon(r, bias)),
        "min_entropy_bits": max(0.0, k - n * block_leak_min(r, bias)),
    }


def residual_entropy_linear(bias: float, n: int = 1785, k: int = 131) -> dict[str, float]:
    """The same two figures for any linear code-offset over n i.i.d. cells (profile 4, polar):
    the helper is a syndrome-like n - k bit value, so
      Shannon:      H(X | W) >= n h(b) - (n - k)
      min-entropy:  H~inf(X | W) >= n (-log2 max(b, 1 - b)) - (n - k)
    (Dodis, Ostrovsky, Reyzin, Smith, SIAM J. Comput. 2008, lemma 2.2)."""
    if not 0 <= bias <= 1:
        raise ValueError(f"bias must lie in [0, 1], got {bias}")
    if bias in (0.0, 1.0):
        return {"shannon_bits": 0.0, "min_entropy_bits": 0.0}
    h = -bias * log2(bias) - (1 - bias) * log2(1 - bias)
    hmin = -log2(max(bias, 1 - bias))
    return {
        "shannon_bits": max(0.0, n * h - (n - k)),
        "min_entropy_bits": max(0.0, n * hmin - (n - k)),
    }


def max_bias_for(bits: float, profile: Profile = PROFILE_2) -> float:
    """Largest |bias - 0.5| (returned as a bias above 0.5) keeping min-entropy >= bits."""
    lo, hi = 0.5, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if residual_entropy(mid, profile)["min_entropy_bits"] >= bits:
            lo = mid
        else:
            hi = mid
    return lo
