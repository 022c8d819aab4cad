"""`qlink rig` list / power-cycle / run, through Typer's CliRunner (as `qlink rig ...` calls
them), against emulated boards; `run` writes its JSON and Markdown reports. A port the rig cannot
open (missing, held by another program) is one sentence and exit status 1, never a traceback."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hil import scenarios, steps
from hil.emulated import EmulatedBoard
from hil.rigcli import app
from hil.targets import PortError, SerialTarget, open_failure

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


_MISSING = "/dev/ttyDOESNOTEXIST"
_NO_PORT = (
    f"no serial port {_MISSING}; plug the board in or correct the name "
    "(qlink rig list shows the ports with a board)"
)


def _in_use(port: str) -> str:
    return (
        f"serial port {port} is in use by another program (a console, mpremote or another rig "
        "command); close that program, then retry"
    )


def test_power_cycle_on_a_port_that_does_not_exist_says_so_and_exits_1() -> None:
    result = runner.invoke(app, ["power-cycle", _MISSING])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # an exit, not an escaped exception
    assert result.stderr == f"power-cycle failed: {_NO_PORT}\n"
    assert result.stdout == ""


@pytest.fixture
def held_pty() -> Iterator[str]:
    # A pty whose port another process holds as mpremote does (pyserial, exclusive=True).
    master, slave = os.openpty()
    port = os.ttyname(slave)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import serial, sys\n"
            "s = serial.Serial(sys.argv[1], exclusive=True)\n"
            "print('held', flush=True)\n"
            "sys.stdin.read()\n",
            port,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield port
        assert holder.poll() is None  # the rig left the holder alone
    finally:
        holder.communicate(timeout=10)
        os.close(master)
        os.close(slave)


def test_power_cycle_on_a_port_another_program_holds_says_it_is_in_use(held_pty: str) -> None:
    # Run as `qlink rig` runs, in a process of its own: what a person sees is all it prints.
    proc = subprocess.run(
        [sys.executable, "-m", "hil.rigcli", "power-cycle", held_pty],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr == f"power-cycle failed: {_in_use(held_pty)}\n"
    assert proc.stdout == ""


def test_flash_to_a_port_that_does_not_exist_says_so_and_exits_1(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text('{"server": "https://localhost:8443"}')
    ca = tmp_path / "ca.der"
    ca.write_bytes(b"0")
    args = ["flash", "--board", "unix", "--port", _MISSING, "--config", str(config)]
    result = runner.invoke(app, [*args, "--ca", str(ca)])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert result.stderr == f"flash failed: {_NO_PORT}\n"


@pytest.mark.parametrize(
    ("config_bytes", "ca_name", "why"),
    [
        (b"{not json", "ca.der", "config.json is not JSON text; give the board's config.json"),
        (b"\xff\xfe", "ca.der", "config.json is not JSON text"),
        (b"[1, 2]", "ca.der", "config.json must hold a JSON object"),
        (b"{}", "missing.der", "cannot read"),
    ],
)
def test_flash_checks_what_it_installs_before_the_board(
    tmp_path: Path, config_bytes: bytes, ca_name: str, why: str
) -> None:
    config = tmp_path / "config.json"
    config.write_bytes(config_bytes)
    (tmp_path / "ca.der").write_bytes(b"0")
    args = ["flash", "--board", "unix", "--port", _MISSING, "--config", str(config)]
    result = runner.invoke(app, [*args, "--ca", str(tmp_path / ca_name)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.stderr.startswith("flash failed: ") and why in result.stderr
    assert _NO_PORT not in result.stderr  # refused before the port was tried


def test_reading_the_console_of_a_port_that_does_not_exist_is_a_port_error() -> None:
    with pytest.raises(PortError) as e:
        SerialTarget(_MISSING).wait_for("never", timeout=1)
    assert str(e.value) == _NO_PORT
    last = steps.current().steps[-1]  # the rig's step log shows the failed step
    assert (last.name, last.ok, last.error) == ("wait_for", False, "PortError")


@pytest.mark.parametrize(
    ("code", "sentence"),
    [
        (errno.ENOENT, "no serial port /dev/ttyX; plug the board in or correct the name"),
        (errno.EACCES, "no permission to open /dev/ttyX; add your user to the port's group"),
        (errno.EPERM, "no permission to open /dev/ttyX; add your user to the port's group"),
        (errno.EBUSY, "serial port /dev/ttyX is in use by another program"),
        (errno.EAGAIN, "serial port /dev/ttyX is in use by another program"),
        (errno.EIO, "cannot open serial port /dev/ttyX (Input/output error); check the board"),
    ],
    ids=lambda v: errno.errorcode[v] if isinstance(v, int) else "",
)
def test_each_open_failure_becomes_a_sentence_saying_what_to_do(code: int, sentence: str) -> None:
    message = open_failure("/dev/ttyX", OSError(code, os.strerror(code)))
    assert message.startswith(sentence)
    assert "\n" not in message


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


def test_run_without_scenario_files_says_where_they_are(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from hil import rigcli

    monkeypatch.setattr(rigcli, "REPO", tmp_path)  # as installed: no tests/ beside the package
    monkeypatch.chdir(tmp_path)  # and not run from a checkout
    result = CliRunner().invoke(rigcli.app, ["run"])
    assert result.exit_code == 1
    assert "no scenario files" in result.output and "--tests FILE" in result.output
    assert "Traceback" not in result.output


def test_run_as_installed_finds_the_scenarios_of_the_checkout_it_runs_from(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from hil import rigcli

    checkout = tmp_path / "checkout"
    (checkout / "tests" / "e2e").mkdir(parents=True)
    for name in ("test_rig_b.py", "test_rig_a.py", "test_rig_soak.py", "test_other.py"):
        (checkout / "tests" / "e2e" / name).write_text("")
    monkeypatch.setattr(rigcli, "REPO", tmp_path / "site-packages")
    monkeypatch.chdir(checkout)
    assert [p.name for p in rigcli._default_scenarios()] == ["test_rig_a.py", "test_rig_b.py"]


def test_run_with_a_report_in_a_folder_that_does_not_exist_fails_before_running(
    tmp_path: Path,
) -> None:
    from typer.testing import CliRunner

    from hil import rigcli

    report = tmp_path / "missing" / "rep"
    result = CliRunner().invoke(rigcli.app, ["run", "--report", str(report)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"the report's folder {report.parent} does not exist" in result.output
    assert not report.parent.exists()
