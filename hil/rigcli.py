"""`qlink rig`: list targets, flash a board, open its console, power-cycle, run scenarios.

`run` executes the rig scenarios with pytest and writes a report (pass/fail per scenario and
board, with timings) as JSON and Markdown.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Annotated, NoReturn

import typer

# The rig's modules (targets, build, serial) are imported by the commands that use them, so
# `qlink --help` and `qlink rig --help` do not load the rig.
app = typer.Typer(help="The HIL rig: flash and drive boards, run scenarios.", no_args_is_help=True)
REPO = Path(__file__).resolve().parent.parent


@app.command("list")
def list_targets(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array on stdout.")] = False,
) -> None:
    """Serial ports with a board attached (USB), and the board kinds the rig can build for."""
    import serial.tools.list_ports

    from hil import unixport

    ports = serial.tools.list_ports.comports()
    boards = [
        (d.name, json.loads((d / "board.json").read_text()))
        for d in sorted(unixport.BOARDS.iterdir())
        if (d / "board.json").exists()
    ]
    emulated = "any number: EmulatedBoard (MicroPython Unix port behind a pty)"
    if as_json:
        rows: list[dict[str, object]] = [
            {"kind": "serial", "port": p.device, "description": p.description} for p in ports
        ]
        rows += [{"kind": "board", "name": name, "board": board} for name, board in boards]
        rows.append({"kind": "emulated", "description": emulated})
        typer.echo(json.dumps(rows, indent=2))
        return
    for p in ports:
        typer.echo(f"serial  {p.device}  {p.description}")
    for name, board in boards:
        typer.echo(f"board   {name}  {board}")
    typer.echo(f"emulated  {emulated}")


@app.command()
def flash(
    board: Annotated[str, typer.Option(help="rp2040, esp32 or unix")],
    port: Annotated[str, typer.Option(help="serial port, e.g. /dev/ttyACM0")],
    config: Annotated[Path, typer.Option(help="config.json to install")] = Path("config.json"),
    ca: Annotated[Path, typer.Option(help="pinned root CA (DER)")] = Path("ca.der"),
) -> None:
    """Compile for the board, copy with mpremote, verify SHA-256 on the device, reset."""
    from hil import build
    from hil.targets import PortError, SerialTarget, TargetError, port_problem

    # What to install is checked before the board is touched.
    try:
        doc = json.loads(config.read_bytes())
        ca_der = ca.read_bytes()
    except OSError as e:
        _fail("flash", f"cannot read {e.filename}: {e.strerror}")
    except ValueError:  # not JSON, or not UTF-8
        _fail("flash", f"{config} is not JSON text; give the board's config.json")
    if not isinstance(doc, dict):
        _fail("flash", f"{config} must hold a JSON object (the board's config.json)")
    try:
        target = SerialTarget(port, board=board)
        digests = target.deploy(doc, ca_der)
        target.hard_reset()
    except PortError as e:
        _fail("flash", port_problem(e.port) or str(e))
    except (OSError, build.BuildError, TargetError) as e:
        _fail("flash", str(e))
    typer.echo(f"flashed {len(digests)} files to {port}; hashes verified; board reset")


@app.command()
def console(port: Annotated[str, typer.Argument(help="serial port")]) -> None:
    """Interactive console on the board (mpremote's terminal; Ctrl-] leaves)."""
    from hil.targets import mpremote_exe

    raise typer.Exit(subprocess.call([mpremote_exe(), "connect", port, "repl"]))


@app.command("power-cycle")
def power_cycle(port: Annotated[str, typer.Argument(help="serial port")]) -> None:
    """Reset the board (machine.reset(); a real board has no power switch on the rig)."""
    from hil.targets import PortError, SerialTarget, TargetError, port_problem

    try:
        SerialTarget(port).hard_reset()
    except PortError as e:
        _fail("power-cycle", port_problem(e.port) or str(e))
    except TargetError as e:
        _fail("power-cycle", str(e))


def _fail(action: str, why: str) -> NoReturn:
    """The one message a person reads when a rig command fails, and exit status 1."""
    typer.echo(f"{action} failed: {why}", err=True)
    raise typer.Exit(1) from None


@app.command()
def run(
    scenario: Annotated[str, typer.Option(help="pytest -k expression, e.g. 'a or d'")] = "",
    report: Annotated[Path, typer.Option(help="report path without suffix")] = Path("rig-report"),
    board: Annotated[list[str] | None, typer.Option(help="real board port(s)")] = None,
    tests: Annotated[
        list[Path] | None,
        typer.Option(
            help="scenario test files (default: the rig scenarios, tests/e2e/test_rig_*.py)"
        ),
    ] = None,
) -> None:
    """Run the rig scenarios; write <report>.json and <report>.md."""
    xml = report.with_suffix(".xml")
    if not report.parent.is_dir():  # found now, not after the scenarios ran
        _fail("run", f"the report's folder {report.parent} does not exist")
    files = [str(p) for p in tests] if tests else [str(p) for p in _default_scenarios()]
    if not files:
        _fail(
            "run",
            "no scenario files; the rig scenarios are tests/e2e/test_rig_*.py of a qlink "
            "checkout: run from one, or give --tests FILE",
        )
    # xunit1: the family that carries the properties pytest-embedded records.
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "junit_family=xunit1",
    ]
    cmd += files
    cmd += [f"--junitxml={xml}"] + (["-k", scenario] if scenario else [])
    for p in board or []:
        cmd += ["--qlink-board", p]
    t0 = time.monotonic()
    rc = subprocess.call(cmd)
    rows = _rows(xml, ", ".join(board) if board else "emulated")
    doc = {"exit": rc, "seconds": round(time.monotonic() - t0, 1), "scenarios": rows}
    report.with_suffix(".json").write_text(json.dumps(doc, indent=2))
    lines = ["| scenario | board | result | seconds |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['scenario']} | {r['board']} | {r['result']} | {r['seconds']} |" for r in rows]
    counts = {k: sum(1 for r in rows if r["result"] == k) for k in ("pass", "FAIL", "skip")}
    lines.append(
        f"{counts['pass']} passed, {counts['FAIL']} failed, {counts['skip']} skipped "
        f"in {doc['seconds']} s"
    )
    report.with_suffix(".md").write_text("\n".join(lines) + "\n")
    typer.echo("\n".join(lines))
    raise typer.Exit(rc)


def _default_scenarios() -> list[Path]:
    """The rig scenarios of the checkout this package runs from, else of the checkout in the
    current directory (the package installed from a wheel, run from a checkout)."""
    for root in (REPO, Path.cwd()):
        found = sorted((root / "tests" / "e2e").glob("test_rig_*.py"))
        found = [p for p in found if p.name != "test_rig_soak.py"]  # the soak is `make soak`
        if found:
            return found
    return []


def _rows(xml: Path, board: str = "emulated") -> list[dict[str, object]]:
    if not xml.exists():
        return []
    rows: list[dict[str, object]] = []
    for case in ET.parse(xml).getroot().iter("testcase"):  # noqa: S314 (our own pytest output)
        failed = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped") is not None
        rows.append(
            {
                "scenario": case.get("name", ""),
                "board": board,
                "result": "skip" if skipped else ("FAIL" if failed else "pass"),
                "seconds": round(float(case.get("time", "0")), 2),
            }
        )
    return rows


if __name__ == "__main__":
    app()
