"""`qlink puf report`: statistics of N power-up reads of M dies and the key failure they imply.

Reads come from emulated dies (the unix board's silicon model) or from a .npy file of real
boards' reads collected by the rig, shape (dies, reads, bytes). The analysis is host.puf.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

# numpy, matplotlib and the analysis are imported by `report` itself: `qlink --help` and
# `qlink puf --help` must not pay their ~0.8 s.
app = typer.Typer(help="SRAM-PUF statistics and key-failure figures.", no_args_is_help=True)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


@app.callback()
def _group() -> None:
    """SRAM-PUF statistics and key-failure figures (`qlink puf report`)."""


@app.command("report")
def report(
    dies: Annotated[int, typer.Option("--dies", "-m", min=2, help="emulated dies")] = 8,
    reads: Annotated[int, typer.Option("--reads", "-n", min=2, help="power-ups per die")] = 20,
    nbytes: Annotated[
        int, typer.Option("--bytes", min=1, max=8192, help="SRAM bytes per read")
    ] = 224,
    temperature: Annotated[float, typer.Option(help="die temperature, degrees C")] = 25.0,
    supply: Annotated[float, typer.Option(help="supply voltage, V")] = 3.3,
    age: Annotated[float, typer.Option(help="years of ageing")] = 0.0,
    reads_file: Annotated[
        Path | None, typer.Option("--from", help=".npy of real reads (dies, reads, bytes)")
    ] = None,
    png: Annotated[Path, typer.Option(help="where to write the plot")] = Path("puf-report.png"),
    as_json: Annotated[bool, typer.Option("--json", help="print the figures as JSON")] = False,
) -> None:
    """Intra-die BER, Hamming weight, inter-die distance, bias, min-entropy, key failure."""
    import numpy as np

    from hil import puf
    from host.puf import polar
    from host.puf.analysis import MeasurementError, analyse
    from host.puf.failure import PROFILE_2, key_failure
    from host.puf.plot import failure_curve

    if reads_file is not None:
        try:
            data = np.load(reads_file)
        except (OSError, ValueError) as e:
            err.print(f"cannot read {reads_file}: {e}; give a .npy of shape (dies, reads, bytes)")
            raise typer.Exit(2) from e
        source = str(reads_file)
    else:
        # Reads at the reference conditions first (read 0 is the enrolment read), then the rest
        # under the requested stress, so the BER is what reconstruction would see.
        stressed = {"temperature_c": temperature, "supply_v": supply, "age_years": age}
        try:
            ref = puf.collect(dies, 1, nbytes)
            rest = puf.collect(dies, reads - 1, nbytes, params=stressed)
        except puf.PufRunError as e:
            err.print(str(e))
            raise typer.Exit(1) from e
        data = np.concatenate([ref, rest], axis=1)
        source = f"{dies} emulated dies, {temperature:g} C, {supply:g} V, {age:g} years"
    try:
        rep = analyse(np.asarray(data, dtype=np.uint8))
    except MeasurementError as e:
        err.print(f"{e}; the report needs >= 2 dies with >= 2 reads each")
        raise typer.Exit(2) from e
    failure_curve(png, measured_ber=rep.intra_ber)
    figures = asdict(rep)
    figures["failure_at_15pct"] = polar.key_failure_bounds(0.15)[1]
    figures["failure_at_20pct"] = polar.key_failure_bounds(0.20)[1]
    figures["profile2_failure_at_15pct"] = float(key_failure(PROFILE_2, 0.15))
    figures["profile2_failure_at_20pct"] = float(key_failure(PROFILE_2, 0.20))
    if as_json:
        out.print_json(json.dumps(figures))
    else:
        t = Table(title=f"PUF report: {source}")
        t.add_column("figure")
        t.add_column("value", justify="right")
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
            ("predicted key failure at measured BER (bound)", f"{rep.predicted_key_failure:.3e}"),
            (
                "key failure at 15 % / 20 % BER (profile 4, bound)",
                f"{figures['failure_at_15pct']:.3e} / {figures['failure_at_20pct']:.3e}",
            ),
            (
                "key failure at 15 % / 20 % BER (profile 2, exact)",
                f"{figures['profile2_failure_at_15pct']:.3e} / "
                f"{figures['profile2_failure_at_20pct']:.3e}",
            ),
            (
                "residual entropy (Shannon / min-entropy bound)",
                f"{rep.residual_shannon_bits:.1f} / {rep.residual_min_entropy_bits:.1f} bits",
            ),
        ]
        for k, v in rows:
            t.add_row(k, v)
        out.print(t)
        out.print(f"plot: {png}")
