"""`qlink puf report`: statistics of N power-up reads of M dies and the key failure they imply.

Reads come from emulated dies (the unix board's silicon model) or from a .npy file of real
boards' reads collected by the rig, shape (dies, reads, bytes). The analysis is host.puf.
The key figures are the enrolment profile's (5: von Neumann pairs + polar code,
host/puf/debias.py) at the population bias `--bias` (the emulated dies' parameter), else at the
measured bias; profile 4's and profile 2's figures stay beside them.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

# numpy, matplotlib and the analysis are imported by `report` itself: `qlink --help` and
# `qlink puf --help` must not pay their ~0.8 s.
app = typer.Typer(help="SRAM-PUF statistics and key-failure figures.", no_args_is_help=True)
out = Console(soft_wrap=True, emoji=False)
err = Console(stderr=True, soft_wrap=True, emoji=False)
PNG = Path("puf-report.png")  # the plot, in the folder the command runs in


@app.callback()
def _group() -> None:
    """SRAM-PUF statistics and key-failure figures (`qlink puf report`)."""


def _conditions_problem(
    temperature: float, supply: float, age: float, bias: float | None
) -> str | None:
    """What is wrong with the stress conditions asked for, if anything."""
    given = {"--temperature": temperature, "--supply": supply, "--age": age, "--bias": bias}
    for name, value in given.items():
        if value is not None and not math.isfinite(value):
            return f"{name} must be a finite number, not {value}"
    if not -55 <= temperature <= 150:
        return f"--temperature must be -55 to 150 degrees C, not {temperature:g}"
    if not 0 < supply <= 6:
        return f"--supply must be above 0 and at most 6 V, not {supply:g}"
    if not 0 <= age <= 100:
        return f"--age must be 0 to 100 years, not {age:g}"
    return None


def _png_problem(png: Path) -> str | None:
    if png.suffix.lower() != ".png":
        return f"--png must name a .png file, not {str(png)!r}"
    if png.is_dir():
        return f"--png names a folder: {png}"
    if not png.parent.is_dir():
        return f"--png: the folder {png.parent} does not exist"
    return None


@app.command("report")
def report(
    dies: Annotated[int, typer.Option("--dies", "-m", min=2, help="emulated dies")] = 8,
    reads: Annotated[int, typer.Option("--reads", "-n", min=2, help="power-ups per die")] = 20,
    nbytes: Annotated[
        int, typer.Option("--bytes", min=1, max=8192, help="SRAM bytes per read")
    ] = 640,
    bias: Annotated[
        float | None,
        typer.Option(
            min=0.1,
            max=0.9,
            help="population bias P(1) of the emulated dies, and the bias the key figures are "
            "computed at (default: the model's 0.5 for the dies, the measured bias for the "
            "figures)",
        ),
    ] = None,
    temperature: Annotated[
        float, typer.Option(help="die temperature, degrees C (-55 to 150)")
    ] = 25.0,
    supply: Annotated[float, typer.Option(help="supply voltage, V (above 0, at most 6)")] = 3.3,
    age: Annotated[float, typer.Option(help="years of ageing (0 to 100)")] = 0.0,
    reads_file: Annotated[
        Path | None, typer.Option("--from", help=".npy of real reads (dies, reads, bytes)")
    ] = None,
    png: Annotated[Path, typer.Option(help="where to write the plot (.png)")] = PNG,
    as_json: Annotated[bool, typer.Option("--json", help="print the figures as JSON")] = False,
) -> None:
    """Intra-die BER, Hamming weight, inter-die distance, bias, min-entropy, key failure."""
    problem = _conditions_problem(temperature, supply, age, bias) or _png_problem(png)
    if problem:
        err.print(problem, markup=False)
        raise typer.Exit(2)
    try:
        import matplotlib  # noqa: F401  (the plot's; checked here so that both say the same)
        import numpy as np
    except ImportError as e:
        err.print(
            f"qlink puf report needs numpy and matplotlib ({e.name} is missing): "
            "pip install 'qlink[puf]', or make setup in a checkout",
            markup=False,
        )
        raise typer.Exit(1) from None

    from hil import puf
    from host.puf import debias, polar
    from host.puf.analysis import MeasurementError, analyse
    from host.puf.failure import PROFILE_2, key_failure
    from host.puf.plot import failure_curve

    if reads_file is not None:
        try:
            data = np.load(reads_file)
            if (
                not isinstance(data, np.ndarray)
                or data.ndim != 3
                or data.dtype.kind not in "biu"
                or (data.size and (data.min() < 0 or data.max() > 255))
            ):
                raise ValueError("it does not hold bytes (unsigned 8-bit reads)")
        except (OSError, ValueError, EOFError) as e:  # EOFError: an empty file
            why = str(e) or type(e).__name__
            err.print(
                f"cannot read {reads_file}: {why}; give a .npy of shape (dies, reads, bytes)",
                markup=False,
            )
            raise typer.Exit(2) from e
        source = str(reads_file)
    else:
        # Reads at the reference conditions first (read 0 is the enrolment read), then the rest
        # under the requested stress, so the BER is what reconstruction would see.
        stressed = {"temperature_c": temperature, "supply_v": supply, "age_years": age}
        die = {} if bias is None else {"bias": bias}
        try:
            ref = puf.collect(dies, 1, nbytes, params=die)
            rest = puf.collect(dies, reads - 1, nbytes, params={**die, **stressed})
        except puf.PufRunError as e:
            err.print(str(e))
            raise typer.Exit(1) from e
        data = np.concatenate([ref, rest], axis=1)
        source = f"{dies} emulated dies, {temperature:g} C, {supply:g} V, {age:g} years"
        if bias is not None:
            source += f", bias {bias:g}"
    try:
        rep = analyse(np.asarray(data, dtype=np.uint8), bias)
    except MeasurementError as e:
        err.print(f"{e}; the report needs >= 2 dies with >= 2 reads each", markup=False)
        raise typer.Exit(2) from e
    failure_curve(png, measured_ber=rep.intra_ber)
    at = rep.figures_bias
    figures: dict[str, object] = dict(asdict(rep))
    figures["profile"] = 5
    # Worst split of the errors between cells that read 0 and 1 (docs/identity.md, 2).
    f15, f20 = debias.worst_key_failure(0.15, at)[0], debias.worst_key_failure(0.20, at)[0]
    figures["failure_at_15pct"] = f15
    figures["failure_at_20pct"] = f20
    figures["stationary_failure_at_15pct"] = debias.key_failure_bounds(0.15, at)[1]
    figures["stationary_failure_at_20pct"] = debias.key_failure_bounds(0.20, at)[1]
    figures["bias_supported"] = debias.in_window(at)
    figures["enrolment_refusal_probability"] = debias.refusal_probability(at)
    figures["profile4_failure_at_15pct"] = polar.key_failure_bounds(0.15)[1]
    figures["profile4_failure_at_20pct"] = polar.key_failure_bounds(0.20)[1]
    figures["profile2_failure_at_15pct"] = float(key_failure(PROFILE_2, 0.15))
    figures["profile2_failure_at_20pct"] = float(key_failure(PROFILE_2, 0.20))
    if as_json:
        out.print_json(json.dumps(figures))
    else:
        t = Table(title=f"PUF report: {source}")
        t.add_column("figure")
        t.add_column("value", justify="right")

        def opt(v: float | None, spec: str) -> str:
            return "-" if v is None else format(v, spec)

        rows = [
            ("reads (dies x reads x bits)", f"{rep.dies} x {rep.reads} x {rep.bits}"),
            ("intra-die BER (mean / worst die)", f"{rep.intra_ber:.4f} / {rep.intra_ber_max:.4f}"),
            ("Hamming weight", f"{rep.hamming_weight:.4f}"),
            ("inter-die distance", f"{rep.inter_distance:.4f}"),
            ("bias P(1)", f"{rep.bias:.4f}"),
            (
                "min-entropy per bit (cells / from bias)",
                f"{rep.min_entropy_per_bit:.3f} / {rep.min_entropy_from_bias:.3f}",
            ),
            (
                "von Neumann pairs: unequal share / ones among kept",
                f"{opt(rep.pair_yield, '.4f')} / {opt(rep.debiased_bias, '.4f')}",
            ),
            (
                "kept pair split / both wrong (measured; predicted)",
                f"{opt(rep.retained_erasure_rate, '.4f')} / {opt(rep.retained_error_rate, '.5f')}"
                f"; {opt(rep.predicted_retained_erasure_rate, '.4f')} / "
                f"{opt(rep.predicted_retained_error_rate, '.5f')}",
            ),
            ("bias of the key figures (supported 0.38-0.62)", f"{at:.4f}"),
            ("predicted key failure at measured BER (bound)", f"{rep.predicted_key_failure:.3e}"),
            ("key failure at 15 % / 20 % BER (profile 5, bound)", f"{f15:.3e} / {f20:.3e}"),
            (
                "key failure at 15 % / 20 % BER (profile 4, bound)",
                f"{polar.key_failure_bounds(0.15)[1]:.3e} / "
                f"{polar.key_failure_bounds(0.20)[1]:.3e}",
            ),
            (
                "key failure at 15 % / 20 % BER (profile 2, exact)",
                f"{float(key_failure(PROFILE_2, 0.15)):.3e} / "
                f"{float(key_failure(PROFILE_2, 0.20)):.3e}",
            ),
            (
                "residual entropy, profile 5 (Shannon / min-entropy bound)",
                f"{rep.residual_shannon_bits:.1f} / {rep.residual_min_entropy_bits:.1f} bits",
            ),
            (
                "residual entropy, profile 4 (Shannon / min-entropy bound)",
                f"{rep.profile4_residual_shannon_bits:.1f} / "
                f"{rep.profile4_residual_min_entropy_bits:.1f} bits",
            ),
        ]
        for k, v in rows:
            t.add_row(k, v)
        out.print(t)
        out.print(f"plot: {png}", markup=False)
