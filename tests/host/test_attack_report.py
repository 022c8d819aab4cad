"""docs/security.md's table and bench/results/attacks.json come from one `make attacks` run of
the whole suite: every case of tests/attacks is in them, each held, and the table is exactly
what the results give."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results" / "attacks.json"


def _suite_conftest() -> ModuleType:
    sys.path.insert(0, str(REPO / "tests" / "attacks"))
    try:
        spec = importlib.util.spec_from_file_location(
            "attacks_conftest", REPO / "tests" / "attacks" / "conftest.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "tests" / "attacks"))


def _cases() -> list[dict[str, object]]:
    cases: list[dict[str, object]] = json.loads(RESULTS.read_text())["cases"]
    return cases


def test_every_case_of_the_suite_was_run_and_held() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/attacks",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    collected = {line for line in out.splitlines() if line.startswith("tests/attacks/")}
    assert len(collected) > 30
    reported = {str(c["test"]) for c in _cases()}
    assert collected - reported == set(), "run `make attacks` after adding a case"
    assert reported - collected == set(), "run `make attacks` after removing a case"
    assert [c["name"] for c in _cases() if not c["ok"]] == []
    assert all(c["name"] and c["expected"] and c["observed"] for c in _cases())


def test_the_security_page_shows_the_results_table() -> None:
    conftest = _suite_conftest()
    doc = (REPO / "docs" / "security.md").read_text()
    table = doc.split(conftest.TABLE_START, 1)[1].split(conftest.TABLE_END, 1)[0].strip()
    assert table == conftest.table(_cases())
