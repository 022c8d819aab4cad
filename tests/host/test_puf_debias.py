"""Profile 5 (von Neumann pairs + polar code, firmware/qdid/debias.py): its design against the
firmware's constants, the effective channel of a kept pair against Monte Carlo runs of
heterogeneous cells and of the silicon model, the failure bounds against the firmware decoder,
and the entropy accounting across the die population's bias (host/puf/debias.py)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from hil import puf, unixport
from host.puf import debias, polar
from host.puf.analysis import analyse
from host.puf.entropy import residual_entropy_linear


def _firmware() -> str:
    return (unixport.FIRMWARE / "qdid" / "debias.py").read_text()


def _const(name: str) -> int:
    m = re.search(rf"^{name} = const\((\w+)\)", _firmware(), re.M)
    assert m, f"firmware/qdid/debias.py must define {name} = const(...)"
    return int(m.group(1), 0)


def test_firmware_information_set_is_the_designed_one() -> None:
    m = re.search(r"^INFO = const\(\s*(0x[0-9A-Fa-f]+)\s*\)", _firmware(), re.M)
    assert m, "firmware/qdid/debias.py must define INFO = const(0x...)"
    assert int(m.group(1), 16) == debias.info_mask()
    assert len(debias.information_set()) == debias.K == 131


def test_firmware_rate_0_table_is_derived_from_the_information_set() -> None:
    m = re.search(r"^_R0 = bytes\.fromhex\(((?:\s*\"[0-9a-f]*\")+)\s*\)", _firmware(), re.M)
    assert m, "firmware/qdid/debias.py must define _R0 = bytes.fromhex(...)"
    table = bytes.fromhex("".join(re.findall(r'"([0-9a-f]*)"', m.group(1))))
    assert table == debias.rate0_table()
    assert len(table) == 256 and table[0] & 0b10 == 0  # the root has information leaves


def test_firmware_sizes_and_window_are_the_designed_ones() -> None:
    assert _const("RESPONSE_LEN") == debias.RESPONSE_BYTES == 640  # 5120 raw bits <= 8192
    assert _const("HELPER_LEN") == debias.HELPER_BYTES == 468 <= 1024
    assert _const("_SEL") == debias.SELECTION_BYTES and _const("_OFF") == debias.OFFSET_BYTES
    assert _const("_N") == debias.N and _const("_CELLS") == debias.RAW_BITS
    assert (_const("_SHARE_MIN_PCT"), _const("_SHARE_MAX_PCT")) == (38, 62)
    assert debias.WINDOW == (0.38, 0.62)
    # The firmware refuses ones * 100 < 38 * 5120 or > 62 * 5120.
    least, most = debias.window_counts()
    assert (least - 1) * 100 < 38 * 5120 <= least * 100
    assert most * 100 <= 62 * 5120 < (most + 1) * 100


def test_channel_of_a_kept_pair_by_hand() -> None:
    # At bias 0.5 both cells flip with p: both wrong p^2, split 2p(1 - p).
    right, erased, wrong = debias.symbol_channel(0.2, 0.5)
    assert wrong == pytest.approx(0.04) and erased == pytest.approx(0.32)
    assert right + erased + wrong == pytest.approx(1)
    # At bias 0.42 a cell that read 1 is likelier to flip (p / 2b) than one that read 0.
    q0, q1 = debias.cell_error_rates(0.2, 0.42)
    assert q0 == pytest.approx(0.2 / 1.16) and q1 == pytest.approx(0.2 / 0.84)
    assert 0.58 * q0 + 0.42 * q1 == pytest.approx(0.2)  # the population BER
    assert debias.symbol_channel(0.2, 0.42) == pytest.approx(debias.symbol_channel(0.2, 0.58))
    # (1 - b) q0 = b q1 is the split of p with the most double errors (AM-GM).
    splits = [(x, (0.2 - 0.58 * x) / 0.42) for x in np.linspace(0, 0.2 / 0.58, 41)]
    assert max(a * b for a, b in splits) <= q0 * q1 + 1e-12
    with pytest.raises(ValueError, match="bit error rate"):
        debias.cell_error_rates(0.9, 0.42)
    with pytest.raises(ValueError, match="bias"):
        debias.cell_error_rates(0.2, 1.0)


def _beta_cells(rng: np.random.Generator, n: int, ber: float, bias: float) -> np.ndarray:
    # One probability per cell from a Beta law with mean `bias` and 2 E[p(1 - p)] = ber: a
    # U-shaped population (most cells nearly stable, some noisy), as SRAM measures.
    r = ber / (2 * bias * (1 - bias))  # = s / (s + 1), s = alpha + beta
    s = r / (1 - r)
    return rng.beta(bias * s, (1 - bias) * s, size=n)


@pytest.mark.parametrize(("ber", "bias"), [(0.20, 0.42), (0.15, 0.58), (0.20, 0.50)])
def test_kept_pairs_see_the_derived_channel_in_a_monte_carlo_of_heterogeneous_cells(
    ber: float, bias: float
) -> None:
    # Enrolment read, selection of unequal pairs, a second read: how often a kept pair's votes
    # split and how often both are wrong, against symbol_channel(ber, bias), and the kept first
    # cells against 1/2. 10^6 pairs: the bias-blind figure (a 2p(1 - p) split at bias 0.42 or
    # 0.58) is more than 8 standard deviations off, so the test tells the two apart.
    rng = np.random.default_rng(20150913)
    n = 1_000_000
    p = _beta_cells(rng, 2 * n, ber, bias)
    enrol = rng.random(2 * n) < p
    again = rng.random(2 * n) < p
    assert np.mean(again != enrol) == pytest.approx(ber, abs=0.002)  # the population's BER
    x1, x2 = enrol[:n], enrol[n:]
    e1, e2 = (again != enrol)[:n], (again != enrol)[n:]
    kept = x1 != x2
    k = int(kept.sum())
    assert k / n == pytest.approx(debias.pair_yield(bias), abs=5 * math.sqrt(0.25 / n))
    _, erased, wrong = debias.symbol_channel(ber, bias)
    for observed, want in ((np.mean((e1 ^ e2)[kept]), erased), (np.mean((e1 & e2)[kept]), wrong)):
        assert abs(observed - want) <= 5 * math.sqrt(want * (1 - want) / k), (observed, want)
    assert abs(np.mean(x1[kept]) - 0.5) <= 5 * math.sqrt(0.25 / k)
    # Either retained value sees the same channel (the decoder's symmetry needs it).
    for v in (False, True):
        sub = kept & (x1 == v)
        assert abs(np.mean((e1 ^ e2)[sub]) - erased) <= 5 * math.sqrt(erased / sub.sum())
    if bias != 0.5:
        naive = 2 * ber * (1 - ber)
        assert abs(np.mean((e1 ^ e2)[kept]) - naive) > 8 * math.sqrt(naive * (1 - naive) / k)


@pytest.mark.parametrize("bias", [0.42, 0.58])
def test_kept_pairs_of_the_silicon_model_see_the_derived_channel(bias: float) -> None:
    # Emulated dies at real SRAM's extreme biases: the measured split and double-error rates of
    # the kept pairs against what the measured BER and bias predict; the kept first cells are
    # unbiased although the cells are not.
    reads = puf.collect(3, 6, 640, campaign="debias-channel", params={"bias": bias})
    rep = analyse(reads)
    assert abs(rep.bias - 0.5) > 0.05
    assert rep.retained_erasure_rate is not None and rep.retained_error_rate is not None
    assert rep.predicted_retained_erasure_rate is not None
    assert rep.predicted_retained_error_rate is not None
    assert rep.retained_erasure_rate == pytest.approx(rep.predicted_retained_erasure_rate, rel=0.1)
    kept_reads = 3 * 5 * 1200  # about: 3 dies x 5 later reads x ~1250 kept pairs
    sd = math.sqrt(rep.predicted_retained_error_rate / kept_reads)
    assert abs(rep.retained_error_rate - rep.predicted_retained_error_rate) <= 5 * sd + 2e-4
    assert rep.debiased_bias == pytest.approx(0.5, abs=5 * math.sqrt(0.25 / 3700))


def test_uniform_density_evolution_is_the_general_one() -> None:
    ch = polar.channel(*debias.symbol_channel(0.2, 0.42))
    general = polar.evolve([ch] * 256)
    fast = polar.evolve_uniform(ch, 8)
    for a, b in zip(general, fast, strict=True):
        assert np.allclose(a, b, rtol=1e-11, atol=1e-300)
    odd = polar.channel(0.6, 0.3, 0.1)
    for a, b in zip(polar.evolve([odd] * 32), polar.evolve_uniform(odd, 5), strict=True):
        assert np.allclose(a, b, rtol=1e-11, atol=1e-300)


@pytest.mark.parametrize("bias", [0.42, 0.45, 0.50, 0.55, 0.58, 0.38, 0.62])
def test_both_failure_targets_hold_across_the_bias_range(bias: float) -> None:
    # Real SRAM's 0.42..0.58 and the window's edges, for the worst split of the errors.
    lo15, hi15 = debias.key_failure_bounds(0.15, bias)
    lo20, hi20 = debias.key_failure_bounds(0.20, bias)
    assert lo15 <= hi15 and lo20 <= hi20
    w15, w20 = debias.worst_key_failure(0.15, bias)[0], debias.worst_key_failure(0.20, bias)[0]
    assert hi15 <= w15 <= 1e-9
    assert hi20 <= w20 <= 1e-6
    if 0.42 <= bias <= 0.58:
        assert w15 <= 1e-15 and w20 <= 5e-9  # with margin: the window's edges are the limit


def test_worst_split_is_found() -> None:
    # The grid + golden-section search reaches the maximum of a fine scan.
    ber, bias = 0.20, 0.42
    worst, q0 = debias.worst_key_failure(ber, bias)
    scan = max(
        debias.split_failure_bound(x, (ber - (1 - bias) * x) / bias)
        for x in np.linspace(0, ber / (1 - bias), 97)
    )
    assert scan <= worst * 1.001
    assert 0 < q0 < debias.cell_error_rates(ber, bias)[0]  # not the stationary split


def test_targets_hold_well_beyond_the_window() -> None:
    assert debias.bias_margin() < 0.36
    assert not debias.targets_met(0.30)


def test_monte_carlo_of_the_firmware_decoder_lies_within_its_bounds() -> None:
    # The firmware's profile 5 (viper decoder, unix port) on biased responses with the stationary
    # split of errors, where failures are observable: 30 % BER at bias 0.42 (bounds 0.029..0.44).
    trials, failures = puf.monte_carlo(0.30, 400, profile=5, bias=0.42)
    lo, hi = debias.key_failure_bounds(0.30, 0.42)
    rate = failures / trials
    sd = math.sqrt(max(hi * (1 - hi), lo * (1 - lo)) / trials)
    assert lo - 4.5 * sd <= rate <= hi + 4.5 * sd, (rate, lo, hi)
    assert failures > 0


def test_residual_entropy_keeps_131_bits_across_the_bias_range() -> None:
    for bias in (0.42, 0.45, 0.5, 0.55, 0.58, 0.38, 0.62):
        got = debias.residual_entropy(bias)
        assert got == {"shannon_bits": 131.0, "min_entropy_bits": 131.0}
        # Profile 4's code offset leaves nothing by the min-entropy bound there.
        if bias != 0.5:
            assert residual_entropy_linear(bias)["min_entropy_bits"] == 0.0
    # Pairs whose cells differ in bias leak: 1e-3 apart costs ~3 bits, 1e-2 ~30.
    assert debias.residual_entropy(0.5, 1e-3)["min_entropy_bits"] == pytest.approx(128.05, abs=0.01)
    assert debias.residual_entropy(0.5, 1e-2)["min_entropy_bits"] < 102
    assert debias.retained_one_probability(0.3, 0.0) == pytest.approx(0.5)


def test_enrolment_window_admits_real_sram_and_yields_enough_pairs() -> None:
    for bias in (0.42, 0.58):
        assert debias.refusal_probability(bias) < 1e-8
    assert debias.refusal_probability(0.30) > 0.999
    assert debias.refusal_probability(0.70) > 0.999
    # A die at the window's edge still has 1024 unequal pairs among 2560.
    assert debias.shortfall_probability(0.38) < 1e-12
    assert debias.shortfall_probability(0.5) < debias.shortfall_probability(0.38)
    assert debias.binomial_cdf(10, 4, 0.5) == pytest.approx(386 / 1024)
