"""`python -m bench [NAME ...]`: run the benchmarks, write bench/results/<name>.json, print tables.

A benchmark is a module in bench/ with `run() -> dict`; the dict holds at least "figures":
{label: {unit: value, ...}}. Figures of one run are compared with each other (ratios), never
with another run: the machine is shared and noisy.

After the results are written, the figures README.md, docs/*.md and CHANGELOG.md quote are
filled in from them (bench/quote.py); a quoted figure that no result holds fails the run.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

from bench._results import requote, save

HERE = Path(__file__).resolve().parent


# Modules of bench/ that are not benchmarks.
_TOOLS = {"compare", "quote"}


def _modules(wanted: list[str]) -> list[str]:
    names = sorted(
        p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_") and p.stem not in _TOOLS
    )
    unknown = set(wanted) - set(names)
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {sorted(unknown)}; have: {names}")
    return wanted or names


def _table(name: str, result: dict) -> None:
    figures: dict[str, dict[str, float]] = result["figures"]
    units = sorted({u for fig in figures.values() for u in fig})
    print(f"\n{name}")
    print(f"  {'figure':<28}" + "".join(f"{u:>18}" for u in units))
    for label, fig in figures.items():
        cells = "".join(f"{fig[u]:>18.6g}" if u in fig else f"{'':>18}" for u in units)
        print(f"  {label:<28}{cells}")
    for note in result.get("notes", []):
        print(f"  note: {note}")


def main(argv: list[str]) -> int:
    for name in _modules(argv):
        started = time.time()
        module = importlib.import_module(f"bench.{name}")
        print(f"running {name} ...", flush=True)
        result = module.run()
        out = save(name, result, started)
        _table(name, result)
        print(f"  written: {out.relative_to(HERE.parent)}")
    return requote()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
