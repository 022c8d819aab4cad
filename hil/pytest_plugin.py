"""The rig's pytest plugin (registered as the `pytest11` entry point `qlink`).

`--board PORT` selects a real board on a serial port; without it, tests run on emulated boards.
Fixtures: `server` (real qlink server + managed Mosquitto), `broker` ((host, port) of it),
`board` (a target: SerialTarget on --board, else an EmulatedTarget on a fresh emulated board),
`fleet` (call `fleet(n)` for n emulated boards). Every rig action is a timed step with its
arguments (hil.steps), shown in the report section "rig steps"; a failing test gets the console
log of every board it used attached.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pluggy
import pytest

from hil import steps
from hil.emulated import EmulatedBoard
from hil.targets import EmulatedTarget, SerialTarget

_BOARDS = pytest.StashKey[list[EmulatedBoard]]()
_STEPS = pytest.StashKey[steps.StepLog]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("qlink", "qlink rig")
    group.addoption(
        "--board",
        action="append",
        default=[],
        metavar="PORT",
        help="serial port of a real board to run the board tests on (repeat for a fleet); "
        "without it the tests use emulated boards on the MicroPython Unix port",
    )


@pytest.fixture(scope="session")
def board_ports(request: pytest.FixtureRequest) -> list[str]:
    """The serial ports given with --board (empty: emulated boards)."""
    return list(request.config.getoption("--board"))


@pytest.fixture(autouse=True)
def rig_steps(request: pytest.FixtureRequest) -> Iterator[steps.StepLog]:
    log = steps.use(steps.StepLog())
    request.node.stash[_STEPS] = log
    request.node.stash.setdefault(_BOARDS, [])
    yield log


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pluggy.Result[pytest.TestReport], None]:
    outcome = yield
    report = outcome.get_result()
    log = item.stash.get(_STEPS, None)
    # The steps so far go with the test's call report (and with a failing setup or teardown).
    if log is not None and log.steps and (call.when == "call" or report.failed):
        report.sections.append(("rig steps", log.text()))
    if report.failed:
        for b in item.stash.get(_BOARDS, []):
            if b.console_path.exists():
                tail = b.console_path.read_text(errors="replace").splitlines()[-200:]
                report.sections.append((f"console {b.name}", "\n".join(tail)))


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from hil.serverproc import ServerProcess

    proc = ServerProcess(tmp_path_factory.mktemp("qlink-rig-server")).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def broker(server: object) -> tuple[str, int]:
    return ("localhost", server.broker_port)  # type: ignore[attr-defined]


def _emulated(request: pytest.FixtureRequest, root: Path, name: str) -> EmulatedBoard:
    b = EmulatedBoard(root, name)
    request.node.stash.setdefault(_BOARDS, []).append(b)
    request.addfinalizer(b.close)
    return b


@pytest.fixture
def board(
    request: pytest.FixtureRequest, board_ports: list[str], tmp_path: Path
) -> EmulatedTarget | SerialTarget:
    if board_ports:
        return SerialTarget(board_ports[0])
    return EmulatedTarget(_emulated(request, tmp_path, "board"))


@pytest.fixture
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[int], list[EmulatedBoard]]:
    def make(n: int) -> list[EmulatedBoard]:
        return [_emulated(request, tmp_path, f"board-{i:02d}") for i in range(n)]

    return make
