"""Exact key-failure probability of the fuzzy extractor's concatenated code under i.i.d. bit
errors, in exact rational arithmetic (no floating-point cancellation in the tails).

Profile 2 (firmware/qdid/fuzzy.py): inner repetition R = 7 decoded by majority, outer
BCH(255, 131, t = 18) decoded up to its radius. An inner block is wrong with
P_b = P(Bin(R, p) >= (R + 1) / 2); the bounded-distance decoder fails iff more than t of the
n blocks are wrong: P_key = P(Bin(n, P_b) > t). For profile 2's soft retry this is an upper
bound (the retry only ever adds successes).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from math import comb, expm1, log1p


@dataclass(frozen=True)
class Profile:
    """A repetition + bounded-distance code-offset profile."""

    name: str
    repetition: int
    length: int
    dimension: int
    radius: int

    @property
    def raw_bits(self) -> int:
        return self.repetition * self.length


PROFILE_2 = Profile("profile 2 rep7+bch255", repetition=7, length=255, dimension=131, radius=18)
PROFILE_1 = Profile("profile 1 rep31", repetition=31, length=128, dimension=128, radius=0)


def _as_fraction(p: float | Fraction) -> Fraction:
    if isinstance(p, Fraction):
        q = p
    else:
        q = Fraction(p).limit_denominator(10**12)
    if not 0 <= q <= 1:
        raise ValueError(f"bit error rate must lie in [0, 1], got {p}")
    return q


def binomial_tail(n: int, p: Fraction, k: int) -> Fraction:
    """P(Bin(n, p) >= k), exactly."""
    return sum(
        (comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(max(k, 0), n + 1)), Fraction(0)
    )


def block_error(profile: Profile, ber: float | Fraction) -> Fraction:
    """Probability that the majority of one inner block's copies is wrong."""
    r = profile.repetition
    if r % 2 == 0:
        raise ValueError("repetition must be odd so that the majority is defined")
    return binomial_tail(r, _as_fraction(ber), (r + 1) // 2)


def key_failure(profile: Profile, ber: float | Fraction) -> Fraction:
    """Exact probability that the bounded-distance decoder does not return the enrolled key."""
    pb = block_error(profile, ber)
    if profile.radius == 0:
        # Profile 1: every one of `length` blocks must be right.
        return 1 - (1 - pb) ** profile.length
    return binomial_tail(profile.length, pb, profile.radius + 1)


def key_failure_float(profile: Profile, ber: float) -> float:
    """The same figure in floating point (for plots: ~1000x faster, relative error ~1e-12;
    every term is positive, so the tail sums do not cancel)."""
    if not 0 <= ber <= 1:
        raise ValueError(f"bit error rate must lie in [0, 1], got {ber}")
    r = profile.repetition
    pb = sum(comb(r, i) * ber**i * (1 - ber) ** (r - i) for i in range((r + 1) // 2, r + 1))
    if profile.radius == 0:
        return 1.0 if pb >= 1 else -expm1(profile.length * log1p(-pb))
    n = profile.length
    return sum(comb(n, j) * pb**j * (1 - pb) ** (n - j) for j in range(profile.radius + 1, n + 1))
