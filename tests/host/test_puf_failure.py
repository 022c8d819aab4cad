"""The fuzzy extractor's key-failure figures: exact from the code's decoding radius
(host/puf/failure.py), confirmed by Monte Carlo runs of the firmware decoder where failures are
observable, and the design targets checked against the exact figures."""

from __future__ import annotations

import math
import re
from fractions import Fraction

import pytest

from hil import puf, unixport
from host.puf import bch, polar
from host.puf.entropy import max_bias_for, residual_entropy
from host.puf.failure import (
    PROFILE_1,
    PROFILE_2,
    Profile,
    binomial_tail,
    block_error,
    key_failure,
    key_failure_float,
)


def test_firmware_generator_is_the_bch_255_131_18_generator() -> None:
    src = (unixport.FIRMWARE / "qdid" / "fuzzy.py").read_text()
    m = re.search(r"^GENERATOR = const\((0x[0-9A-Fa-f]+)\)", src, re.M)
    assert m, "firmware/qdid/fuzzy.py must define GENERATOR = const(0x...)"
    g = bch.generator(18)
    assert int(m.group(1), 16) == g
    assert g.bit_length() - 1 == 124 and bch.dimension(18) == 131
    assert all(s == 0 for s in bch.syndromes(g, 18))


def test_profile_sizes_meet_the_targets() -> None:
    # Both profiles use the shared code-offset framing of firmware/qdid/offset.py.
    assert PROFILE_2.raw_bits == polar.REAL == 1785 <= 1785  # per 128-bit secret (131 bits)
    src = (unixport.FIRMWARE / "qdid" / "offset.py").read_text()
    helper_len = int(re.search(r"^HELPER_LEN = const\((\d+)\)", src, re.M).group(1))
    assert helper_len == 4 + 224 + 16 == 244 <= 256


def test_exact_failure_meets_1e_9_at_15_percent() -> None:
    pk = key_failure(PROFILE_2, Fraction(15, 100))
    assert pk < Fraction(1, 10**9)
    assert math.isclose(float(pk), 5.4305e-10, rel_tol=1e-3)


def test_exact_failure_at_20_percent_is_recorded_and_misses_1e_6() -> None:
    # Not yet the target (<= 1e-6): hard decoding of rep 7 + BCH(255, 131, 18) gives 1.05e-3.
    pk = float(key_failure(PROFILE_2, Fraction(20, 100)))
    assert math.isclose(pk, 1.0473e-3, rel_tol=1e-3)


def test_block_error_of_repetition_7_by_hand() -> None:
    p = Fraction(1, 10)
    want = sum(math.comb(7, i) * p**i * (1 - p) ** (7 - i) for i in range(4, 8))
    assert block_error(PROFILE_2, p) == want
    assert key_failure(PROFILE_2, 0) == 0
    assert key_failure(PROFILE_2, 1) == 1
    assert binomial_tail(5, Fraction(1, 2), 0) == 1


def test_float_figures_match_the_exact_ones() -> None:
    for prof in (PROFILE_1, PROFILE_2):
        for p in (0.01, 0.04, 0.15, 0.2, 0.3):
            exact = float(key_failure(prof, p))
            assert math.isclose(key_failure_float(prof, p), exact, rel_tol=1e-9), (prof, p)
    with pytest.raises(ValueError, match="bit error rate"):
        key_failure_float(PROFILE_2, -0.1)


def test_profile_1_figures_of_its_own_documentation() -> None:
    assert math.isclose(float(key_failure(PROFILE_1, 0.0408)), 1.26e-12, rel_tol=0.02)


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="bit error rate"):
        key_failure(PROFILE_2, 1.5)
    with pytest.raises(ValueError, match="odd"):
        block_error(Profile("even", 6, 255, 131, 18), 0.1)
    with pytest.raises(ValueError, match="bias"):
        residual_entropy(-0.1)


def _agree(failures: int, trials: int, exact: float) -> None:
    # Binomial test at 4.5 standard deviations (false alarm ~ 1e-5 per check).
    sd = math.sqrt(trials * exact * (1 - exact))
    assert abs(failures - trials * exact) <= 4.5 * sd + 1, (failures, trials, exact)


@pytest.mark.parametrize("ber", [0.22, 0.25])
def test_monte_carlo_of_the_firmware_decoder_agrees_with_the_exact_figure(ber: float) -> None:
    trials, failures = puf.monte_carlo(ber, 600, profile=2)
    _agree(failures, trials, float(key_failure(PROFILE_2, ber)))


def test_residual_entropy_accounting() -> None:
    at_half = residual_entropy(0.5)
    assert at_half == {"shannon_bits": 131.0, "min_entropy_bits": 131.0}
    # The helper leaks the bias: the Shannon residual drops below 128 bits past ~52 %.
    assert residual_entropy(0.52)["shannon_bits"] > 128 > residual_entropy(0.53)["shannon_bits"]
    assert residual_entropy(0.48)["shannon_bits"] == pytest.approx(
        residual_entropy(0.52)["shannon_bits"]
    )
    # The conservative min-entropy bound allows far less: |bias - 0.5| <= 0.0018.
    b = max_bias_for(128)
    assert 0.5015 < b < 0.5025
    assert residual_entropy(b)["min_entropy_bits"] == pytest.approx(128, abs=1e-6)


def _firmware_polar() -> str:
    return (unixport.FIRMWARE / "qdid" / "polar.py").read_text()


def test_firmware_polar_information_set_is_the_designed_one() -> None:
    m = re.search(r"^INFO = const\(\s*(0x[0-9A-Fa-f]+)\s*\)", _firmware_polar(), re.M)
    assert m, "firmware/qdid/polar.py must define INFO = const(0x...)"
    info = polar.information_set()
    assert int(m.group(1), 16) == polar.info_mask()
    # u_i for i < 263 reaches punctured positions only: frozen.
    assert len(info) == 131 and min(info) >= polar.PUNCTURED == 263


def test_firmware_polar_rate_0_table_is_derived_from_the_information_set() -> None:
    m = re.search(r"^_R0 = bytes\.fromhex\(((?:\s*\"[0-9a-f]*\")+)\s*\)", _firmware_polar(), re.M)
    assert m, "firmware/qdid/polar.py must define _R0 = bytes.fromhex(...)"
    table = bytes.fromhex("".join(re.findall(r'"([0-9a-f]*)"', m.group(1))))
    assert table == polar.rate0_table()
    assert len(table) == 512 and table[0] & 0b10 == 0  # the root has information leaves


def test_punctured_code_on_the_read_positions_keeps_dimension_131() -> None:
    # The helper is an offset of the code restricted to the 1785 read positions: its dimension
    # must stay K for the n - k entropy accounting (docs/identity.md section 3) to hold.
    assert polar.read_dimension() == polar.K == 131
    assert polar.encode(1 << 5) == sum(1 << j for j in range(8) if j & 5 == j)
    # A message on the frozen punctured channels alone changes no read position.
    assert polar.encode((1 << 262) | (1 << 7)) >> polar.PUNCTURED == 0


def test_polar_profile_meets_both_failure_targets_by_its_bounds() -> None:
    lo15, hi15 = polar.key_failure_bounds(0.15)
    assert lo15 <= hi15 <= 1e-9
    assert math.isclose(hi15, 1.720e-14, rel_tol=0.01)
    lo20, hi20 = polar.key_failure_bounds(0.20)
    assert lo20 <= hi20 <= 1e-6  # the union bound, an upper bound: the target is met
    assert math.isclose(hi20, 1.299e-8, rel_tol=0.01) and math.isclose(lo20, 1.221e-9, rel_tol=0.01)
    with pytest.raises(ValueError, match="bit error rate"):
        polar.densities(1.5)


def test_a_tie_counts_as_right_in_the_lower_bound_and_as_wrong_in_the_upper() -> None:
    # A tie decodes to 0: right when the key bit is 0, wrong when it is 1. A bound for every key
    # leaves ties out of the lower bound (max P(L < 0)) and counts them in the upper one.
    dens = polar.densities(0.20)
    below, upto = polar.tie_error_probabilities(dens)
    info = list(polar.information_set())
    assert (upto[info] > below[info]).all()  # ties happen on every information channel
    lo, hi = polar.key_failure_bounds(0.20)
    assert lo == below[info].max() < upto[info].max()
    assert hi == pytest.approx(upto[info].sum())


@pytest.mark.parametrize(("ber", "trials"), [(0.27, 2000), (0.29, 1000), (0.31, 400)])
def test_monte_carlo_of_the_polar_decoder_lies_within_its_bounds(ber: float, trials: int) -> None:
    # The firmware decoder itself (viper code on the unix port) against the density-evolution
    # bounds where failures are observable: 27 % (union bound 0.022), 29 % (0.021..0.21),
    # 31 % (0.086..1).
    trials, failures = puf.monte_carlo(ber, trials, profile=4)
    lo, hi = polar.key_failure_bounds(ber)
    rate = failures / trials
    sd = math.sqrt(max(hi * (1 - hi), lo * (1 - lo)) / trials)
    assert lo - 4.5 * sd <= rate <= hi + 4.5 * sd, (rate, lo, hi)


def test_monte_carlo_rejects_unknown_profiles() -> None:
    with pytest.raises(ValueError, match="unknown helper profile"):
        puf.monte_carlo(0.1, 1, profile=9)
