"""Statistics of SRAM power-up reads: N reads of each of M dies, as a bit array.

Figures (Maes, "PUF-based key generation", 2013, ch. 2 and 4):
- intra-die BER: mean fractional Hamming distance between each read and the die's first read
  (the enrolment read), averaged over dies: what the fuzzy extractor must correct;
- Hamming weight: mean fraction of 1 bits over every read;
- inter-die distance: mean fractional distance between the first reads of every pair of dies
  (0.5 for unique dies; a clone would sit near the intra-die BER);
- bias: P(1) over the enrolment reads (read 0 of every die: the values the helper data is made
  from; a per-cell majority over an even number of reads would count ties as 1 and overstate it);
- min-entropy: per cell, -log2 max(p, 1 - p) with p the share of dies whose enrolment read is
  1, averaged over cells (an estimate that needs many dies to be tight), and the figure implied by
  the overall bias alone;
- von Neumann pairs (profile 5, host/puf/debias.py: bit k of bytes 2t and 2t + 1): the share of
  pairs whose enrolment reads differ (the yield), the share of ones among their first cells (the
  retained bits: 0.5 if the pairs are exchangeable, whatever the bias), and over the later reads
  how often a kept pair's two votes split (an erasure) or are both wrong, beside what
  host.puf.debias predicts from the measured BER and bias.

The key figures (failure, residual entropy) are the enrolment profile's (5) at the measured
bias, or at a population bias given to analyse(); profile 4's residual entropy is kept beside
them: its code offset leaks the bias.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import log2

import numpy as np
from numpy.typing import NDArray

from host.puf import debias, polar
from host.puf.entropy import residual_entropy_linear


class MeasurementError(ValueError):
    """The reads do not have the shape the analysis needs."""


@dataclass(frozen=True)
class Report:
    dies: int
    reads: int
    bits: int
    intra_ber: float
    intra_ber_max: float
    hamming_weight: float
    inter_distance: float
    bias: float
    min_entropy_per_bit: float
    min_entropy_from_bias: float
    predicted_key_failure: float
    residual_shannon_bits: float
    residual_min_entropy_bits: float
    figures_bias: float
    profile4_residual_shannon_bits: float
    profile4_residual_min_entropy_bits: float
    pair_yield: float | None
    debiased_bias: float | None
    retained_erasure_rate: float | None
    retained_error_rate: float | None
    predicted_retained_erasure_rate: float | None
    predicted_retained_error_rate: float | None


def to_bits(reads: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """(dies, reads, bytes) uint8 -> (dies, reads, bits), MSB first."""
    if reads.ndim != 3:
        raise MeasurementError(f"reads must be (dies, reads, bytes), got shape {reads.shape}")
    return np.unpackbits(reads, axis=2)


def intra_ber(bits: NDArray[np.uint8]) -> NDArray[np.float64]:
    """Per die: mean fractional distance of reads 1.. to read 0."""
    if bits.shape[1] < 2:
        raise MeasurementError("intra-die BER needs at least 2 reads per die")
    ber: NDArray[np.float64] = np.mean(bits[:, 1:, :] != bits[:, :1, :], axis=(1, 2))
    return ber


def inter_distance(bits: NDArray[np.uint8]) -> float:
    """Mean fractional distance between the first reads of every pair of dies."""
    m = bits.shape[0]
    if m < 2:
        raise MeasurementError("inter-die distance needs at least 2 dies")
    first = bits[:, 0, :]
    total = 0.0
    pairs = 0
    for i in range(m):
        for j in range(i + 1, m):
            total += float(np.mean(first[i] != first[j]))
            pairs += 1
    return total / pairs


def min_entropy_per_bit(bits: NDArray[np.uint8]) -> float:
    """Mean over cells of -log2 max(p, 1-p), p = share of dies whose enrolment read is 1."""
    p = np.mean(bits[:, 0, :].astype(np.float64), axis=0)
    pmax = np.maximum(p, 1 - p)
    return float(np.mean(-np.log2(pmax)))


def pairs(bits: NDArray[np.uint8]) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """(first cells, second cells) of the von Neumann pairs, (dies, reads, pairs): bit k of
    byte 2t with bit k of byte 2t + 1 (an odd last byte has no partner)."""
    nbytes = bits.shape[2] // 8 // 2 * 2
    by = bits[:, :, : nbytes * 8].reshape(bits.shape[0], bits.shape[1], nbytes // 2, 2, 8)
    first = by[:, :, :, 0, :].reshape(bits.shape[0], bits.shape[1], -1)
    second = by[:, :, :, 1, :].reshape(bits.shape[0], bits.shape[1], -1)
    return first, second


def _pair_figures(bits: NDArray[np.uint8]) -> dict[str, float | None]:
    first, second = pairs(bits)
    out: dict[str, float | None] = dict.fromkeys(
        ("pair_yield", "debiased_bias", "retained_erasure_rate", "retained_error_rate")
    )
    if first.shape[2] == 0:
        return out
    kept = first[:, 0, :] != second[:, 0, :]  # selected at enrolment, (dies, pairs)
    out["pair_yield"] = float(np.mean(kept))
    if not kept.any():
        return out
    out["debiased_bias"] = float(np.mean(first[:, 0, :][kept]))
    wrong1 = first[:, 1:, :] != first[:, :1, :]
    wrong2 = second[:, 1:, :] != second[:, :1, :]
    mask = np.broadcast_to(kept[:, None, :], wrong1.shape)
    out["retained_erasure_rate"] = float(np.mean((wrong1 ^ wrong2)[mask]))
    out["retained_error_rate"] = float(np.mean((wrong1 & wrong2)[mask]))
    return out


def analyse(reads: NDArray[np.uint8], bias: float | None = None) -> Report:
    """All figures of one measurement campaign, and what they mean for the key under the
    enrolment profile (5, von Neumann pairs + polar): the failure figure is the
    density-evolution union bound at the measured BER, for the worst split of the errors
    between cells that read 0 and 1. The key figures are computed at the
    population bias `bias` (the emulated dies'), else at the measured one."""
    bits = to_bits(reads)
    ber = intra_ber(bits)
    inter = inter_distance(bits)
    measured = float(np.mean(bits[:, 0, :]))
    at = measured if bias is None else bias
    if not 0 < at < 1:
        raise MeasurementError(f"the bias must lie strictly between 0 and 1, got {at}")
    mean_ber = min(max(float(np.mean(ber)), 0.0), 2 * min(at, 1 - at))
    residual = debias.residual_entropy(at)
    p4 = residual_entropy_linear(at, polar.REAL, polar.K)
    predicted = debias.symbol_channel(mean_ber, at)
    vn = _pair_figures(bits)
    return Report(
        dies=bits.shape[0],
        reads=bits.shape[1],
        bits=bits.shape[2],
        intra_ber=mean_ber,
        intra_ber_max=float(np.max(ber)),
        hamming_weight=float(np.mean(bits)),
        inter_distance=inter,
        bias=measured,
        min_entropy_per_bit=min_entropy_per_bit(bits),
        min_entropy_from_bias=-log2(max(measured, 1 - measured)) if 0 < measured < 1 else 0.0,
        predicted_key_failure=debias.worst_key_failure(mean_ber, at)[0],
        residual_shannon_bits=residual["shannon_bits"],
        residual_min_entropy_bits=residual["min_entropy_bits"],
        figures_bias=at,
        profile4_residual_shannon_bits=p4["shannon_bits"],
        profile4_residual_min_entropy_bits=p4["min_entropy_bits"],
        predicted_retained_erasure_rate=predicted[1],
        predicted_retained_error_rate=predicted[2],
        pair_yield=vn["pair_yield"],
        debiased_bias=vn["debiased_bias"],
        retained_erasure_rate=vn["retained_erasure_rate"],
        retained_error_rate=vn["retained_error_rate"],
    )
