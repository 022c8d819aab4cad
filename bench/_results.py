"""Writing a benchmark's result (bench/results/<name>.json) and refreshing the figures the
documents quote from them: what `python -m bench` and its tools (bench/compare.py) share."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

from bench import quote

RESULTS = Path(__file__).resolve().parent / "results"


def save(name: str, result: dict, started: float) -> Path:  # type: ignore[type-arg]
    """`result` with the machine, start time and duration, as bench/results/<name>.json."""
    result.update(
        machine=platform.machine(), when=int(started), seconds=round(time.time() - started, 1)
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out


def requote() -> int:
    """Fill the documents' figure marks from the results; 1 (and the problems on stderr) when a
    mark names a figure no result holds."""
    changed, problems = quote.refresh()
    print("\nquoted figures: " + (", ".join(changed) + " refreshed" if changed else "unchanged"))
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    return 1 if problems else 0
