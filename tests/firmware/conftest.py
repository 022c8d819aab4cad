"""Collects tests/firmware/test_*.py as MicroPython tests.

Each file runs once inside `micropython -X heapsize=<budget>` (budget from a `# heapsize: 96k`
line in the file, 64k by default); each `test_*` function becomes one pytest item so that host
and firmware results share one summary. MICROPYPATH holds firmware/ and boards/unix compiled
to .mpy, as boards run them; QLINK_VECTORS points at the NIST/RFC vectors of the
`cryptography_vectors` package.
"""

from __future__ import annotations

import ast
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hil import unixport

HERE = Path(__file__).resolve().parent
_MARK = "@@mpunit"
_HEAP_RE = re.compile(r"^#\s*heapsize:\s*(\d+)([kK]?)\s*$", re.M)
_TIMEOUT_RE = re.compile(r"^#\s*timeout:\s*(\d+)\s*$", re.M)


def _vectors_dir() -> str:
    try:
        import cryptography_vectors
    except ImportError:  # the vectors are a test dependency; tests that need them say so
        return ""
    return str(Path(cryptography_vectors.__file__).parent)


def _compiled_firmware() -> Path:
    return unixport.compiled_firmware()


class MicroPythonFailure(Exception):
    pass


class MicroPythonFile(pytest.File):
    _results: dict[str, tuple[str, str]] | None = None
    _output: str = ""

    def collect(self) -> Iterator[pytest.Item]:
        tree = ast.parse(self.path.read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                yield MicroPythonItem.from_parent(self, name=node.name)

    def heap(self) -> int:
        m = _HEAP_RE.search(self.path.read_text())
        if not m:
            return unixport.HEAP_IDENTITY
        return int(m.group(1)) * (1024 if m.group(2) else 1)

    def results(self) -> dict[str, tuple[str, str]]:
        if self._results is None:
            text = self.path.read_text()
            m = _TIMEOUT_RE.search(text)
            timeout = float(m.group(1)) if m else 300.0
            try:
                # The test module runs as .mpy too, so that its own compilation does not eat
                # the heap budget of the code under test.
                compiled_test = _compiled_firmware() / "_tests" / (self.path.stem + ".mpy")
                compiled_test.parent.mkdir(exist_ok=True)
                subprocess.run(
                    [
                        *unixport.mpy_cross_cmd(),
                        "-s",
                        self.path.name,
                        "-o",
                        str(compiled_test),
                        str(self.path),
                    ],
                    check=True,
                    capture_output=True,
                )
                proc = unixport.run(
                    [str(HERE / "mpunit.py"), str(compiled_test)],
                    heap=self.heap(),
                    env={"QLINK_VECTORS": _vectors_dir(), "QLINK_REPO": str(unixport.REPO)},
                    path=[HERE, _compiled_firmware()],
                    timeout=timeout,
                )
                self._output = proc.stdout + proc.stderr
            except subprocess.TimeoutExpired as e:
                self._output = f"timed out after {timeout:.0f}s\n{e.stdout or ''}{e.stderr or ''}"
            results: dict[str, tuple[str, str]] = {}
            for line in self._output.splitlines():
                if not line.startswith(_MARK):
                    continue
                parts = line.split(" ", 4)
                if parts[1] in ("PASS", "FAIL"):
                    detail = parts[4].replace("\\n", "\n") if len(parts) > 4 else ""
                    results[parts[2]] = (parts[1], detail)
            self._results = results
        return self._results


class MicroPythonItem(pytest.Item):
    parent: MicroPythonFile
    # No fixtures reach a test inside MicroPython; plugins that look at every item's fixture
    # values (pytest-embedded's DUT check) find none here.
    funcargs: dict[str, object] = {}  # noqa: RUF012 - read-only, shared empty mapping

    def runtest(self) -> None:
        results = self.parent.results()
        if self.name not in results:
            raise MicroPythonFailure(
                f"{self.name} did not report (crash, MemoryError or time-out). Output:\n"
                + self.parent._output[-4000:]
            )
        status, detail = results[self.name]
        if status != "PASS":
            raise MicroPythonFailure(detail)

    def repr_failure(self, excinfo: Any, style: Any = None) -> str:
        if isinstance(excinfo.value, MicroPythonFailure):
            return f"MicroPython (heap {self.parent.heap()} B):\n{excinfo.value}"
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"micropython: {self.name}"


def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> Any:
    if module_path.parent == HERE and module_path.name.startswith("test_"):
        return MicroPythonFile.from_parent(parent, path=module_path)
    return None
