"""Key failure against bit error rate, as a PNG (matplotlib, Agg backend: no display needed).
Profile 5's BER is the raw cells' read-to-read rate (its kept pairs see the channel
host/puf/debias.py derives from it)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from host.puf import debias, polar
from host.puf.failure import PROFILE_1, PROFILE_2, key_failure_float

TARGET = 1e-9  # key failure at the 15 % design point
TARGET_20 = 1e-6  # key failure at 20 % BER


def failure_curve(
    out: Path,
    *,
    measured_ber: float | None = None,
    monte_carlo: Sequence[tuple[float, float]] = (),
) -> Path:
    """Write the plot to `out` and return it. monte_carlo: (BER, observed failure rate) points."""
    bers = [i / 200 for i in range(1, 61)]  # 0.5 % .. 30 %
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for prof, style in ((PROFILE_2, "-"), (PROFILE_1, ":")):
        ys = [max(key_failure_float(prof, p), 1e-300) for p in bers]
        ax.semilogy(bers, ys, style, label=f"{prof.name} ({prof.raw_bits} bits), exact")
    if monte_carlo:
        ax.semilogy(
            [p for p, _ in monte_carlo],
            [max(f, 1e-300) for _, f in monte_carlo],
            "o",
            label="Monte Carlo (firmware decoders)",
        )
    pb = [0.10 + 0.02 * i for i in range(11)]
    bounds = [polar.key_failure_bounds(p) for p in pb]
    ax.fill_between(
        pb,
        [max(lo, 1e-300) for lo, _ in bounds],
        [max(hi, 1e-300) for _, hi in bounds],
        alpha=0.35,
        label=f"profile 4 polar ({polar.REAL} bits), DE bounds",
    )
    p5 = [0.10 + 0.02 * i for i in range(12)]
    for bias, style in ((0.5, "-"), (debias.SUPPORTED[0], "--")):
        ax.semilogy(
            p5,
            [max(debias.key_failure_bounds(p, bias)[1], 1e-300) for p in p5],
            style,
            color="purple",
            label=f"profile 5 VN + polar ({debias.RAW_BITS} bits), bias {bias:g}, union bound",
        )
    ax.axhline(TARGET, color="red", linestyle="--", label="target 1e-9")
    ax.plot([0.20], [TARGET_20], "rx", markersize=9, label="target 1e-6 at 20 %")
    ax.axvline(0.15, color="grey", linewidth=0.8)
    if measured_ber is not None:
        ax.axvline(
            measured_ber, color="green", linewidth=1.0, label=f"measured BER {measured_ber:.3f}"
        )
    ax.set_ylim(1e-40, 1.0)
    ax.set_xlabel("bit error rate (i.i.d.)")
    ax.set_ylabel("key failure probability")
    ax.set_title("qlink fuzzy extractor: key failure vs BER")
    ax.grid(True, which="major", alpha=0.4)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
