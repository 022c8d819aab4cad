"""`make demo`, the README's first command, as a user runs it: `python -m hil.demo` from a folder
of one's own, its working folder given relative to it (the default, ./demo-data, is one)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def test_the_demo_runs_from_a_relative_working_folder(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hil.demo", "--work", "work/demo-data", "--messages", "1"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "done in" in proc.stdout and "demo failed" not in proc.stdout
    assert (tmp_path / "work" / "demo-data" / "server" / "server.log").is_file()
