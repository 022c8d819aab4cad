"""Reading a callgrind output file: its whole instruction count and its per-function lines
(callgrind_annotate, exclusive counts), for the device-cost benchmarks."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path


def counts(out: Path) -> tuple[int, list[tuple[int, str]]]:
    """(all instructions, [(instructions, annotate line) for each function listed])."""
    text = out.read_text()
    m = re.search(r"^summary:\s*(\d+)", text, re.M) or re.search(r"^totals:\s*(\d+)", text, re.M)
    if not m:
        raise RuntimeError(f"callgrind output without a summary: {out}")
    annotated = subprocess.run(
        ["callgrind_annotate", "--threshold=100", "--inclusive=no", str(out)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [
        (int(line.split()[0].replace(",", "")), line)
        for line in annotated.splitlines()
        if line.strip()[:1].isdigit()
    ]
    return int(m[1]), rows
