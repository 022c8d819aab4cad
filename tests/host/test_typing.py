"""The firmware's type check (mypy-firmware.ini) holds the firmware to the board HAL protocol
(typings/hal.pyi) and to MicroPython's modules (typings/), and its typing guards cost the device
no bytecode."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil import unixport

REPO = unixport.REPO
CONFIG = REPO / "mypy-firmware.ini"
GUARD = "_TYPE_CHECKING = const(0)"


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One cache for the module's runs (typeshed is read once), none in the checkout.
    return tmp_path_factory.mktemp("mypy-cache")


def _mypy(cache: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(CONFIG), "--cache-dir", str(cache)]
    return subprocess.run(
        [*cmd, *map(str, files)], cwd=REPO, capture_output=True, text=True, check=False
    )


def _probe(tmp_path: Path, body: str) -> Path:
    # A module written as firmware is: typing-only names under the guard.
    path = tmp_path / "probe.py"
    path.write_text(
        "from micropython import const\n"
        f"{GUARD}\n"
        "if _TYPE_CHECKING:\n"
        "    from hal import Board\n\n\n" + body
    )
    return path


def test_the_firmware_and_the_three_boards_pass_the_firmware_type_check(mypy_cache: Path) -> None:
    proc = _mypy(mypy_cache)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success: no issues found" in proc.stdout


def test_a_board_method_the_hal_protocol_lacks_is_an_error(
    tmp_path: Path, mypy_cache: Path
) -> None:
    path = _probe(
        tmp_path,
        "def read(board: Board) -> bytes:\n"
        "    return board.sram_bits(16)\n\n\n"
        "def dump(board: Board) -> bytes:\n"
        "    return board.sram_dump(16)\n",
    )
    proc = _mypy(mypy_cache, path)
    assert proc.returncode == 1, proc.stdout
    errors = [ln for ln in proc.stdout.splitlines() if ": error:" in ln]
    assert errors == [f'{path}:12: error: "Board" has no attribute "sram_dump"  [attr-defined]']


def test_a_board_without_every_hal_member_is_refused_where_firmware_takes_a_board(
    tmp_path: Path, mypy_cache: Path
) -> None:
    # qdid.identity.boot is real firmware: its annotation is what refuses the board.
    members = (
        "    name = 'half'\n\n"
        "    def sram_bits(self, nbytes: int) -> bytes:\n"
        "        return bytes(nbytes)\n\n"
        "    def unique_id(self) -> bytes:\n"
        "        return b'id'\n\n"
        "    def cold_boot(self) -> bool:\n"
        "        return True\n\n"
        "    def reset(self) -> None:\n"
        "        pass\n\n"
        "    def led(self, on: bool) -> None:\n"
        "        pass\n"
    )
    noise = "\n    def noise(self, n: int) -> bytes:\n        return bytes(n)\n"
    call = "\n\nfrom qdid import identity\n\nidentity.boot(Half())\n"
    whole = _probe(tmp_path, "class Half:\n" + members + noise + call)
    assert _mypy(mypy_cache, whole).returncode == 0
    half = _probe(tmp_path, "class Half:\n" + members + call)
    proc = _mypy(mypy_cache, half)
    assert proc.returncode == 1, proc.stdout
    assert 'Argument 1 to "boot" has incompatible type "Half"; expected "Board"' in proc.stdout
    assert '"Half" is missing following "Board" protocol member:' in proc.stdout
    assert "noise" in proc.stdout


def test_a_cpython_only_function_is_an_error_in_firmware(tmp_path: Path, mypy_cache: Path) -> None:
    # typings/time.pyi replaces CPython's time: MicroPython has ticks, not monotonic().
    ok = _probe(tmp_path, "import time\n\n\ndef now() -> int:\n    return time.ticks_ms()\n")
    assert _mypy(mypy_cache, ok).returncode == 0
    bad = _probe(tmp_path, "import time\n\n\ndef now() -> float:\n    return time.monotonic()\n")
    proc = _mypy(mypy_cache, bad)
    assert proc.returncode == 1
    assert 'Module has no attribute "monotonic"' in proc.stdout


def _without_guards(source: str) -> str:
    # The same module with its typing guards blanked out (line numbers kept).
    out: list[str] = []
    inside: int | None = None
    for line in source.splitlines(keepends=True):
        indent = len(line) - len(line.lstrip())
        if inside is not None and (not line.strip() or indent > inside):
            out.append("\n")
            continue
        inside = None
        if line.strip() == "if _TYPE_CHECKING:":
            inside = indent
            out.append("\n")
        elif line.startswith(GUARD):
            out.append("\n")
        else:
            out.append(line)
    return "".join(out)


def _guarded_modules() -> Iterator[Path]:
    for path in sorted([*REPO.glob("firmware/**/*.py"), *REPO.glob("boards/*/*.py")]):
        if GUARD in path.read_text():
            yield path


def test_guard_blanking_removes_exactly_the_guard() -> None:
    src = "x = 1\n_TYPE_CHECKING = const(0)  # why\nif _TYPE_CHECKING:\n    import hal\n\ny = 2\n"
    assert _without_guards(src) == "x = 1\n\n\n\n\ny = 2\n"


@pytest.mark.parametrize("module", list(_guarded_modules()), ids=lambda p: str(p.relative_to(REPO)))
def test_typing_guards_compile_to_no_bytecode(module: Path, tmp_path: Path) -> None:
    # -O3 leaves out line numbers: with the guards or without, the bytecode is the same bytes.
    built = []
    for name, text in (
        ("with", module.read_text()),
        ("without", _without_guards(module.read_text())),
    ):
        src = tmp_path / f"{name}.py"
        src.write_text(text)
        out = src.with_suffix(".mpy")
        subprocess.run(
            [
                unixport.mpy_cross(),
                "-O3",
                "-march=armv6m",
                "-s",
                module.name,
                "-o",
                str(out),
                str(src),
            ],
            check=True,
            capture_output=True,
        )
        built.append(out.read_bytes())
    assert built[0] == built[1]
