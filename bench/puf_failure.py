"""Key failure of the fuzzy extractors: exact figures (profile 2), density-evolution bounds
(profile 4, and profile 5, the enrolment default, across the die population's bias) at the
design points, and Monte Carlo runs of the firmware decoders (MicroPython Unix port) where
failures are observable; the entropy accounting of profiles 4 and 5 against the bias; writes the
plot bench/results/puf_failure.png (key failure vs BER against the 1e-9 line)."""

from __future__ import annotations

import json
from pathlib import Path

from hil import puf
from host.puf import debias, polar
from host.puf.entropy import max_bias_for, residual_entropy, residual_entropy_linear
from host.puf.failure import PROFILE_2, key_failure
from host.puf.plot import failure_curve

RESULTS = Path(__file__).resolve().parent / "results"


def run(trials: int = 20000) -> dict[str, object]:
    figures: dict[str, dict[str, float]] = {}
    for ber in (0.10, 0.15, 0.20):
        lo, hi = polar.key_failure_bounds(ber)
        figures[f"p4 bounds@{ber:.2f}"] = {"lower": lo, "upper": hi}
        figures[f"p2 exact@{ber:.2f}"] = {"key_failure": float(key_failure(PROFILE_2, ber))}
    points: list[tuple[float, float]] = []
    for ber, n in ((0.25, trials), (0.27, trials // 4), (0.29, trials // 10), (0.31, trials // 20)):
        lo, hi = polar.key_failure_bounds(ber)
        t, f = puf.monte_carlo(ber, n, profile=4)
        figures[f"p4 mc@{ber:.2f}"] = {"key_failure": f / t, "trials": t, "lower": lo, "upper": hi}
        points.append((ber, f / t))
    for ber, n in ((0.20, trials), (0.22, trials // 4), (0.24, trials // 10)):
        exact = float(key_failure(PROFILE_2, ber))
        t, f = puf.monte_carlo(ber, n, profile=2)
        figures[f"p2 mc@{ber:.2f}"] = {"key_failure": f / t, "trials": t, "exact": exact}
        points.append((ber, f / t))
    figures.update(_profile5(trials))
    figures["sizes"] = {"raw_bits": float(PROFILE_2.raw_bits), "helper_bytes": 244.0}
    figures["p5 sizes"] = {
        "raw_bits": float(debias.RAW_BITS),
        "kept_pairs": float(debias.N),
        "helper_bytes": float(debias.HELPER_BYTES),
    }
    figures["residual@0.50"] = {"bits": residual_entropy_linear(0.5)["shannon_bits"]}
    figures["max_bias_for_128_bits"] = {
        "p4 shannon": _max_bias(lambda b: residual_entropy_linear(b)["shannon_bits"]),
        "p2 shannon": _max_bias(lambda b: residual_entropy(b)["shannon_bits"]),
        "p2 min_entropy_bound": max_bias_for(128),
    }
    png = failure_curve(RESULTS / "puf_failure.png", monte_carlo=points)
    return {
        "figures": figures,
        "notes": [
            "p2 exact: P(Bin(255, P(Bin(7, p) >= 4)) >= 19), bounded-distance decoding",
            "p4 bounds: exact density evolution of the firmware's clipped min-sum SC decoder "
            "(punctured polar code); max / union over the 131 information positions",
            "mc: firmware decoders on random responses with i.i.d. errors",
            "p5: BER is the raw cells' read-to-read rate at the die population's bias; kept "
            "pairs see LLR -1 with q0 q1 and 0 with q0 + q1 - 2 q0 q1, q0 = p / (2 (1 - b)), "
            "q1 = p / (2 b) (bounds); worst: the largest union bound over every split "
            "(1 - b) q0 + b q1 = p; p5 mc draws cells with that bias and flips them at q0 / q1",
            f"plot: {png}",
        ],
    }


def _profile5(trials: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for ber in (0.15, 0.20):
        for bias in (0.50, 0.45, 0.42, 0.38):
            lo, hi = debias.key_failure_bounds(ber, bias)
            out[f"p5 bounds@{ber:.2f} bias {bias:.2f}"] = {"lower": lo, "upper": hi}
            worst, q0 = debias.worst_key_failure(ber, bias)
            out[f"p5 worst@{ber:.2f} bias {bias:.2f}"] = {"upper": worst, "q0": q0}
    for ber, bias in ((0.15, 0.42), (0.20, 0.42), (0.20, 0.50)):
        right, erased, wrong = debias.symbol_channel(ber, bias)
        out[f"p5 channel@{ber:.2f} bias {bias:.2f}"] = {
            "right": right,
            "erased": erased,
            "wrong": wrong,
        }
    for ber, bias, n in (
        (0.28, 0.50, trials // 4),
        (0.30, 0.42, trials // 10),
        (0.32, 0.50, trials // 20),
    ):
        lo, hi = debias.key_failure_bounds(ber, bias)
        t, f = puf.monte_carlo(ber, n, profile=5, bias=bias)
        out[f"p5 mc@{ber:.2f} bias {bias:.2f}"] = {
            "key_failure": f / t,
            "trials": t,
            "lower": lo,
            "upper": hi,
        }
    for bias in (0.50, 0.45, 0.42, 0.58):
        p5 = debias.residual_entropy(bias)
        p4 = residual_entropy_linear(bias)
        out[f"entropy@{bias:.2f}"] = {
            "p5 min_entropy": p5["min_entropy_bits"],
            "p5 shannon": p5["shannon_bits"],
            "p4 min_entropy": p4["min_entropy_bits"],
            "p4 shannon": p4["shannon_bits"],
        }
    for mismatch in (1e-4, 1e-3):
        out[f"p5 pair mismatch {mismatch:g}"] = {
            "min_entropy": debias.residual_entropy(0.5, mismatch)["min_entropy_bits"]
        }
    out["p5 range"] = {
        "window_low": debias.WINDOW[0],
        "window_high": debias.WINDOW[1],
        "refusal@0.42": debias.refusal_probability(0.42),
        "shortfall@0.38": debias.shortfall_probability(0.38),
        "targets_bias_low": debias.bias_margin(),
    }
    return out


def _max_bias(residual: object) -> float:
    fn = residual  # (bias) -> bits, decreasing in |bias - 0.5|
    lo, hi = 0.5, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if fn(mid) >= 128:  # type: ignore[operator]
            lo = mid
        else:
            hi = mid
    return lo


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
