"""Every firmware module compiles with mpy-cross for the boards it claims to run on."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from hil import unixport

REPO = unixport.REPO
ARCHS = {"rp2040": "armv6m", "esp32": "xtensawin"}


def _firmware_files() -> list[Path]:
    return sorted((REPO / "firmware").rglob("*.py"))


def _cases() -> list[tuple[Path, str]]:
    cases = [(f, arch) for f in _firmware_files() for arch in ARCHS.values()]
    for board, arch in ARCHS.items():
        hal = REPO / "boards" / board / "board.py"
        if hal.exists():
            cases.append((hal, arch))
    return cases


def test_board_json_names_the_arch_the_compile_uses() -> None:
    for board, arch in ARCHS.items():
        meta = json.loads((REPO / "boards" / board / "board.json").read_text())
        assert meta["mpy_arch"] == arch


@pytest.mark.parametrize(
    ("source", "arch"),
    _cases(),
    ids=lambda v: str(v.relative_to(REPO)) if isinstance(v, Path) else v,
)
def test_compiles_with_mpy_cross(source: Path, arch: str, tmp_path: Path) -> None:
    out = tmp_path / (source.stem + ".mpy")
    proc = subprocess.run(
        [unixport.mpy_cross(), f"-march={arch}", "-o", str(out), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 0
