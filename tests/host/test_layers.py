"""The layers DESIGN.md draws: nothing in host/ imports hil/ (the rig drives the product from
outside, as a user would), so the service and `qlink` install and run without the rig; the
firmware build they share lives in host/firmware.py and the rig re-exports it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from hil import build, unixport
from host import firmware

REPO = Path(__file__).resolve().parents[2]
_LOADERS = {"import_module", "__import__"}  # importlib.import_module("hil...") counts too


def _is_hil(module: str) -> bool:
    return module == "hil" or module.startswith("hil.")


def hil_imports(source: str, filename: str = "<source>") -> list[str]:
    """`line: statement` for every import of hil or hil.* anywhere in `source` (module level,
    inside functions, under `if TYPE_CHECKING:`), and every import_module/__import__ of one
    named by a string literal."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            # `from .hil import x` inside host/ is host's own module, not the rig.
            names = [node.module or ""] if node.level == 0 else []
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arg = node.args[0] if node.args else None
            literal = isinstance(arg, ast.Constant) and isinstance(arg.value, str)
            names = [arg.value] if called in _LOADERS and literal else []
        else:
            continue
        if any(_is_hil(n) for n in names):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def _host_modules() -> list[Path]:
    files = sorted(p for p in (REPO / "host").rglob("*.py") if "__pycache__" not in p.parts)
    assert len(files) > 30 and REPO / "host" / "server" / "otabundle.py" in files
    return files


def test_no_module_of_host_imports_hil() -> None:
    offenders = {
        p.relative_to(REPO).as_posix(): lines
        for p in _host_modules()
        if (lines := hil_imports(p.read_text(), str(p)))
    }
    assert offenders == {}, "host/ must not import hil/ (DESIGN.md); move the code into host/"


@pytest.mark.parametrize(
    "source",
    [
        # otabundle.build_tree's import before host/firmware.py: inside a function.
        "def build_tree():\n    from hil import build, unixport\n",
        "import hil\n",
        "import hil.build as b\n",
        "import os, hil.unixport\n",
        "from hil.unixport import mpy_cross\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from hil.targets import Target\n",
        "import importlib\nimportlib.import_module('hil.rigcli')\n",
        "__import__('hil')\n",
    ],
)
def test_the_scan_finds_every_form_of_importing_hil(source: str) -> None:
    assert len(hil_imports(source)) == 1, source


@pytest.mark.parametrize(
    "source",
    [
        "import hilbert\n",
        "from hilbert import curve\n",
        "from host import firmware\n",
        "from . import hil\n",
        "from .hil import x\n",
        "import importlib\nimportlib.import_module(name)\n",
        "text = 'from hil import build'\n",
    ],
)
def test_the_scan_leaves_names_that_only_look_like_hil(source: str) -> None:
    assert hil_imports(source) == []


def test_the_rig_builds_with_the_host_build_and_its_sources() -> None:
    assert build.build is firmware.build
    assert build.board_info is firmware.board_info
    assert build.sha256_of is firmware.sha256_of
    assert build.BuildError is firmware.BuildError
    assert (build.PACKAGES, build.ENTRY_POINTS) == (firmware.PACKAGES, firmware.ENTRY_POINTS)
    assert unixport.mpy_cross is firmware.mpy_cross
    assert unixport.UnixPortMissing is firmware.UnixPortMissing
    assert (unixport.FIRMWARE, unixport.BOARDS) == (firmware.FIRMWARE, firmware.BOARDS)


def test_a_missing_mpy_cross_says_to_run_make_setup_and_builds_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(firmware.sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "image"
    out.mkdir()
    (out / "earlier.mpy").write_bytes(b"an earlier image")
    with pytest.raises(firmware.UnixPortMissing) as e:
        firmware.build("rp2040", out)
    assert str(e.value) == (
        "mpy-cross (the MicroPython cross-compiler) is not installed; run: make setup"
    )
    assert isinstance(e.value, firmware.BuildError)  # one except clause covers a build
    assert [p.name for p in out.iterdir()] == ["earlier.mpy"]
    assert (out / "earlier.mpy").read_bytes() == b"an earlier image"
    assert str(unixport.UnixPortMissing()) == (
        "the MicroPython Unix port is not installed; run: make setup"
    )


def test_an_unknown_board_names_the_known_ones_and_builds_nothing(tmp_path: Path) -> None:
    out = tmp_path / "image"
    with pytest.raises(firmware.BuildError, match=r"^unknown board 'pico9'; boards: .*rp2040"):
        firmware.build("pico9", out)
    assert not out.exists()
    assert firmware.board_info("rp2040")["name"] == "rp2040"
    assert firmware.board_arch("rp2040") == "armv6m"
