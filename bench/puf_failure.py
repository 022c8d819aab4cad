"""Key failure of the fuzzy extractors: exact figures (profile 2) and density-evolution bounds
(profile 4, the enrolment default) at the design points, and Monte Carlo runs of the firmware
decoders (MicroPython Unix port) where failures are observable; writes the plot
bench/results/puf_failure.png (key failure vs BER against the 1e-9 line)."""

from __future__ import annotations

import json
from pathlib import Path

from hil import puf
from host.puf import polar
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
    figures["sizes"] = {"raw_bits": float(PROFILE_2.raw_bits), "helper_bytes": 244.0}
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
            f"plot: {png}",
        ],
    }


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
