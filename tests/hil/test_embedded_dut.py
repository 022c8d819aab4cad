"""pytest-embedded's serial DUT on an emulated board's pty (the path a USB board takes: its
`--embedded-services serial --port /dev/pts/N` fixtures), and the rig plugin's report on a
failing test: the board's console log and the timed rig steps. Inner pytest runs via pytester."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.emulated import EmulatedBoard

pytest_plugins = ["pytester"]

# A board whose main.py runs until interrupted, as the agent does.
_MAIN = "import time\nprint('BOARD UP')\nwhile True:\n    time.sleep_ms(100)\n"

_DUT_TEST = """
def test_repl_through_pytest_embedded(dut):
    dut.write("\\x03")  # Ctrl-C stops main.py; the friendly REPL answers
    dut.expect(">>> ", timeout=15)
    dut.write("import sys; print('impl', sys.implementation.name, 6 * 7)")
    dut.expect(r"impl micropython 42", timeout=15)
    dut.write("print(open('main.py').read().count('BOARD UP'))")
    dut.expect_exact("1", timeout=15)
"""

_FAILING_TEST = """
def _boot(board):
    board.board.fs.mkdir(parents=True, exist_ok=True)
    (board.board.fs / "boot.py").write_text("")
    (board.board.fs / "main.py").write_text(
        "print('console line of %s' % 'the board')\\nraise SystemExit(0)\\n"
    )
    board.power_on()
    board.wait_for("console line of the board", timeout=30)


def test_passes(qlink_board):
    _boot(qlink_board)


def test_fails(qlink_board):
    _boot(qlink_board)
    assert 6 * 7 == 41, "deliberate"
"""


@pytest.fixture
def up_board(tmp_path: Path) -> Iterator[EmulatedBoard]:
    b = EmulatedBoard(tmp_path, "dut")
    b.fs.mkdir(parents=True)
    (b.fs / "boot.py").write_text("")
    (b.fs / "main.py").write_text(_MAIN)
    b.power_on()
    b.wait_for("BOARD UP", timeout=30)
    yield b
    b.close()


def test_pytest_embedded_serial_dut_drives_the_emulated_board(
    pytester: pytest.Pytester, up_board: EmulatedBoard, tmp_path: Path
) -> None:
    pytester.makepyfile(test_dut=_DUT_TEST)
    logs = tmp_path / "embedded-logs"
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "--embedded-services",
        "serial",
        "--port",
        up_board.port,
        "--root-logdir",
        str(logs),
        "-W",
        "ignore::pytest.PytestExperimentalApiWarning",
        timeout=120,
    )
    result.assert_outcomes(passed=1)
    # The board saw what pytest-embedded typed, through the relay.
    lines = up_board.lines()
    assert "KeyboardInterrupt: " in lines
    assert "impl micropython 42" in lines
    # pytest-embedded kept its own log of the serial session.
    dut_logs = list(logs.rglob("dut.log"))
    assert dut_logs and "impl micropython 42" in dut_logs[0].read_text(errors="replace")


def test_a_failing_test_gets_the_board_console_and_rig_steps_attached(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_rig=_FAILING_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rP", timeout=120)
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    failures = out[out.index("= FAILURES =") : out.index("= PASSES =")]
    passes = out[out.index("= PASSES =") :]
    # The failure carries the console of the board it used, and the timed steps.
    assert "- console board -" in failures
    assert "console line of the board" in failures
    assert "- rig steps -" in failures
    assert "power_on board=board -> ok" in failures
    assert "wait_for board=board pattern=console line of the board -> ok" in failures
    # A passing test keeps its steps in the report but gets no console attached.
    assert "- rig steps -" in passes
    assert "- console board -" not in passes
