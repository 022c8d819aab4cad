"""`qlink rig` list / power-cycle / run, through Typer's CliRunner (as `qlink rig ...` calls
them), against emulated boards; `run` writes its JSON and Markdown reports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hil import scenarios
from hil.emulated import EmulatedBoard
from hil.rigcli import app

runner = CliRunner()

_SCENARIOS = """
import pytest

def test_alpha_passes():
    assert 6 * 7 == 42

def test_beta_fails():
    assert 6 * 7 == 41

@pytest.mark.skip(reason="not on this rig")
def test_gamma_skipped():
    pass
"""


@pytest.fixture
def counting_board(tmp_path: Path) -> Iterator[EmulatedBoard]:
    b = EmulatedBoard(tmp_path, "cli")
    b.fs.mkdir(parents=True)
    (b.fs / "boot.py").write_text("")
    (b.fs / "main.py").write_text(
        "import time\nprint('BOARD UP')\nwhile True:\n    time.sleep_ms(100)\n"
    )
    b.power_on()
    b.wait_for("BOARD UP", timeout=30)
    yield b
    b.close()


def test_list_names_the_boards_the_rig_builds_for_and_the_emulated_target() -> None:
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    boards = re.findall(r"^board\s+(\S+)\s+\{", result.output, re.M)
    assert {"rp2040", "esp32", "unix"} <= set(boards)
    assert re.search(r"^board\s+rp2040\s+\{.*'mpy_arch': 'armv6m'", result.output, re.M)
    assert "emulated  any number" in result.output


def test_power_cycle_resets_the_board_on_its_port(counting_board: EmulatedBoard) -> None:
    boots = counting_board.relay.boots
    before = len(counting_board.lines())
    result = runner.invoke(app, ["power-cycle", counting_board.port])
    assert result.exit_code == 0, result.output
    # main.py runs again after the reset (a soft reset, as mpremote enters the raw REPL, runs
    # boot.py only).
    scenarios.wait_count(counting_board, "^BOARD UP$", 2, timeout=30)
    assert counting_board.lines()[before:].count("BOARD UP") == 1
    assert counting_board.relay.boots == boots + 2


def test_power_cycle_on_a_port_without_a_board_fails_with_the_port_named(tmp_path: Path) -> None:
    result = runner.invoke(app, ["power-cycle", str(tmp_path / "ttyACM9")])
    assert result.exit_code != 0
    assert "ttyACM9" in str(result.exception) + result.output


def test_run_writes_a_json_and_markdown_report_per_scenario(tmp_path: Path) -> None:
    tests = tmp_path / "test_bench_scenarios.py"
    tests.write_text(_SCENARIOS)
    report = tmp_path / "report"
    result = runner.invoke(app, ["run", "--tests", str(tests), "--report", str(report)])
    assert result.exit_code == 1  # one scenario failed
    doc = json.loads(report.with_suffix(".json").read_text())
    assert doc["exit"] == 1 and doc["seconds"] > 0
    rows = [(r["scenario"], r["board"], r["result"]) for r in doc["scenarios"]]
    assert rows == [
        ("test_alpha_passes", "emulated", "pass"),
        ("test_beta_fails", "emulated", "FAIL"),
        ("test_gamma_skipped", "emulated", "skip"),
    ]
    assert all(isinstance(r["seconds"], float) and r["seconds"] >= 0 for r in doc["scenarios"])
    md = report.with_suffix(".md").read_text().splitlines()
    assert md[:2] == ["| scenario | board | result | seconds |", "| --- | --- | --- | --- |"]
    assert [line.split(" | ")[:3] for line in md[2:5]] == [
        ["| test_alpha_passes", "emulated", "pass"],
        ["| test_beta_fails", "emulated", "FAIL"],
        ["| test_gamma_skipped", "emulated", "skip"],
    ]
    assert md[5] == f"1 passed, 1 failed, 1 skipped in {doc['seconds']} s"


def test_run_filters_scenarios_and_names_the_boards(tmp_path: Path) -> None:
    tests = tmp_path / "test_bench_scenarios.py"
    tests.write_text(_SCENARIOS)
    report = tmp_path / "only-alpha"
    result = runner.invoke(
        app, ["run", "--tests", str(tests), "--scenario", "alpha", "--report", str(report)]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(report.with_suffix(".json").read_text())
    assert [r["scenario"] for r in doc["scenarios"]] == ["test_alpha_passes"]


@pytest.mark.e2e
def test_run_a_real_scenario_on_an_emulated_board(tmp_path: Path) -> None:
    # (d) corrupt config -> safe mode, with its own server, through `qlink rig run`.
    report = tmp_path / "rig"
    result = runner.invoke(
        app, ["run", "--scenario", "safe_mode and ConfigError", "--report", str(report)]
    )
    doc = json.loads(report.with_suffix(".json").read_text())
    assert result.exit_code == 0, doc
    assert [(r["result"], r["board"]) for r in doc["scenarios"]] == [("pass", "emulated")]
    assert doc["scenarios"][0]["scenario"].startswith(
        "test_d_corrupt_config_or_helper_data_is_safe_mode_with_the_repl_reachable[config.json"
    )
