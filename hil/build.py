"""The firmware image for one board: the packages compiled to .mpy for the board's architecture
(boards/<board>/board.json "mpy_arch"), the entry points and the board HAL as source."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

from hil import unixport

PACKAGES = ("qdid", "agent")
ENTRY_POINTS = ("boot.py", "main.py", "enrol.py")


class BuildError(RuntimeError):
    pass


def board_info(board: str) -> dict[str, object]:
    path = unixport.BOARDS / board / "board.json"
    if not path.exists():
        known = sorted(p.name for p in unixport.BOARDS.iterdir() if (p / "board.json").exists())
        raise BuildError(f"unknown board {board!r}; boards: {', '.join(known)}")
    info: dict[str, object] = json.loads(path.read_text())
    return info


def build(board: str, out: Path) -> dict[str, Path]:
    """Write the image to `out`; returns device path -> local file, in install order."""
    info = board_info(board)
    arch = info.get("mpy_arch")
    if out.exists():
        shutil.rmtree(out)
    files: dict[str, Path] = {}
    for pkg in PACKAGES:
        (out / pkg).mkdir(parents=True)
        for src in sorted((unixport.FIRMWARE / pkg).glob("*.py")):
            dst = out / pkg / (src.stem + ".mpy")
            cmd = [unixport.mpy_cross(), "-s", f"{pkg}/{src.name}", "-o", str(dst)]
            if isinstance(arch, str):
                cmd.append(f"-march={arch}")
            proc = subprocess.run([*cmd, str(src)], capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise BuildError(f"mpy-cross could not compile {src}: {proc.stderr.strip()}")
            files[f"{pkg}/{dst.name}"] = dst
    for name in ENTRY_POINTS:
        shutil.copy2(unixport.FIRMWARE / name, out / name)
        files[name] = out / name
    for name in ("board.py", "silicon.py"):
        src = unixport.BOARDS / board / name
        if src.exists():
            shutil.copy2(src, out / name)
            files[name] = out / name
    return files


def sha256_of(files: dict[str, Path]) -> dict[str, str]:
    return {dev: hashlib.sha256(p.read_bytes()).hexdigest() for dev, p in files.items()}
