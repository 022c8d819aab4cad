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
  the overall bias alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import log2

import numpy as np
from numpy.typing import NDArray

from host.puf import polar
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


def analyse(reads: NDArray[np.uint8]) -> Report:
    """All figures of one measurement campaign, and what they mean for the key under the
    enrolment profile (4, polar): the failure figure is the density-evolution upper bound."""
    bits = to_bits(reads)
    ber = intra_ber(bits)
    bias = float(np.mean(bits[:, 0, :]))
    mean_ber = float(np.mean(ber))
    residual = residual_entropy_linear(bias, polar.REAL, polar.K)
    return Report(
        dies=bits.shape[0],
        reads=bits.shape[1],
        bits=bits.shape[2],
        intra_ber=mean_ber,
        intra_ber_max=float(np.max(ber)),
        hamming_weight=float(np.mean(bits)),
        inter_distance=inter_distance(bits),
        bias=bias,
        min_entropy_per_bit=min_entropy_per_bit(bits),
        min_entropy_from_bias=-log2(max(bias, 1 - bias)) if 0 < bias < 1 else 0.0,
        predicted_key_failure=polar.key_failure_bounds(min(max(mean_ber, 0.0), 1.0))[1],
        residual_shannon_bits=residual["shannon_bits"],
        residual_min_entropy_bits=residual["min_entropy_bits"],
    )
