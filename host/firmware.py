"""The firmware image for one board: the packages compiled to .mpy for the board's architecture
(boards/<board>/board.json "mpy_arch"), the entry points and the board HAL as source.

The service builds releases from it (`qlink ota build`) and the rig flashes it (hil/build.py and
hil/unixport.py re-export these names), so both ship the same bytes for the same sources.
FIRMWARE and BOARDS are those sources: an installed wheel carries them inside this package
(host/_firmware, host/_boards: pyproject.toml maps them there); a checkout has them beside host/.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent

PACKAGES = ("qdid", "agent")
ENTRY_POINTS = ("boot.py", "main.py", "enrol.py")
_HAL = ("board.py", "silicon.py")  # a board's own modules, installed as source


def _source_tree(packaged: str, checkout: str) -> Path:
    inside = _HERE / packaged
    return inside if inside.is_dir() else _HERE.parent / checkout


FIRMWARE = _source_tree("_firmware", "firmware")
BOARDS = _source_tree("_boards", "boards")


class BuildError(RuntimeError):
    """A board's image cannot be built; the message says why and what to do."""


class UnixPortMissing(BuildError):
    """A program of the MicroPython toolchain (the Unix port, mpy-cross) is not installed."""

    def __init__(self, program: str = "the MicroPython Unix port") -> None:
        super().__init__(program)
        self.program = program

    def __str__(self) -> str:
        return f"{self.program} is not installed; run: make setup"


def mpy_cross() -> str:
    """Path of the `mpy-cross` executable (the venv's first, then PATH)."""
    beside = Path(sys.executable).parent / "mpy-cross"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpy-cross")
    if not found:
        raise UnixPortMissing("mpy-cross (the MicroPython cross-compiler)")
    return found


def compile_mpy(src: Path, name: str, dst: Path, arch: str | None) -> None:
    """Compile `src` to `dst` as the device module `name` (its path on the board, which
    tracebacks show), for `arch` (mpy-cross's -march; None: bytecode only)."""
    cmd = [mpy_cross(), "-s", name, "-o", str(dst)]
    if arch is not None:
        cmd.append(f"-march={arch}")
    proc = subprocess.run([*cmd, str(src)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"mpy-cross could not compile {name} ({src}): {proc.stderr.strip()}")


def board_info(board: str) -> dict[str, object]:
    """boards/<board>/board.json; BuildError naming the known boards otherwise."""
    path = BOARDS / board / "board.json"
    if not path.exists():
        known = sorted(p.name for p in BOARDS.iterdir() if (p / "board.json").exists())
        raise BuildError(f"unknown board {board!r}; boards: {', '.join(known)}")
    info: dict[str, object] = json.loads(path.read_text())
    return info


def board_arch(board: str) -> str | None:
    """The board's mpy architecture (board.json "mpy_arch"), None for bytecode only."""
    arch = board_info(board).get("mpy_arch")
    return arch if isinstance(arch, str) else None


def build(board: str, out: Path) -> dict[str, Path]:
    """Write the image to `out`; returns device path -> local file, in install order."""
    arch = board_arch(board)
    mpy_cross()  # a missing compiler fails here, before an earlier image in `out` is removed
    if out.exists():
        shutil.rmtree(out)
    files: dict[str, Path] = {}
    for pkg in PACKAGES:
        (out / pkg).mkdir(parents=True)
        for src in sorted((FIRMWARE / pkg).glob("*.py")):
            dst = out / pkg / (src.stem + ".mpy")
            compile_mpy(src, f"{pkg}/{src.name}", dst, arch)
            files[f"{pkg}/{dst.name}"] = dst
    for name in ENTRY_POINTS:
        shutil.copy2(FIRMWARE / name, out / name)
        files[name] = out / name
    for name in _HAL:
        src = BOARDS / board / name
        if src.exists():
            shutil.copy2(src, out / name)
            files[name] = out / name
    return files


def sha256_of(files: dict[str, Path]) -> dict[str, str]:
    """Device path -> SHA-256 (hex) of the local file: what the board's copy must hash to."""
    return {dev: hashlib.sha256(p.read_bytes()).hexdigest() for dev, p in files.items()}
