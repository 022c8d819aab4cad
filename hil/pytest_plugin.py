"""The rig's pytest plugin (registered as the `pytest11` entry point `qlink`).

It loads in every pytest run where qlink is installed, so everything it adds carries the `qlink`
prefix and nothing acts unless a test asks for it: no autouse fixture, and the report hook only
touches tests that use the rig fixtures.

`--qlink-board PORT` selects a real board on a serial port; without it, tests run on emulated
boards. Fixtures: `qlink_server` (real qlink server + managed Mosquitto), `qlink_broker`
((host, port) of it), `qlink_board` (a target: SerialTarget on --qlink-board, else an
EmulatedTarget on a fresh emulated board), `qlink_fleet` (call `qlink_fleet(n)` for n emulated
boards), `qlink_board_ports` (the ports given). Every rig action is a timed step with its
arguments (hil.steps): `qlink_rig_steps` gives the test a fresh log (the board fixtures ask for
it; a test that drives hil directly may too), shown in the report section "rig steps"; a failing
test gets the console log of every board it used attached.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pluggy
import pytest

from hil import steps

if TYPE_CHECKING:
    from hil.emulated import EmulatedBoard
    from hil.serverproc import ServerProcess
    from hil.targets import EmulatedTarget, SerialTarget

_BOARDS = pytest.StashKey[list["EmulatedBoard"]]()
_STEPS = pytest.StashKey[steps.StepLog]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("qlink", "qlink rig")
    group.addoption(
        "--qlink-board",
        action="append",
        default=[],
        metavar="PORT",
        help="serial port of a real board for the qlink_board fixture (repeat for a fleet); "
        "without it the rig uses emulated boards on the MicroPython Unix port",
    )


@pytest.fixture(scope="session")
def qlink_board_ports(request: pytest.FixtureRequest) -> list[str]:
    """The serial ports given with --qlink-board (empty: emulated boards)."""
    return list(request.config.getoption("qlink_board"))


@pytest.fixture
def qlink_rig_steps(request: pytest.FixtureRequest) -> Iterator[steps.StepLog]:
    """A fresh log of the test's rig actions, attached to its report."""
    before = steps.current()
    log = steps.use(steps.StepLog())
    request.node.stash[_STEPS] = log
    request.node.stash.setdefault(_BOARDS, [])
    yield log
    steps.use(before)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pluggy.Result[pytest.TestReport], None]:
    outcome = yield
    log = item.stash.get(_STEPS, None)
    if log is None:  # the test used no rig fixture
        return
    report = outcome.get_result()
    # The steps so far go with the test's call report (and with a failing setup or teardown).
    if log.steps and (call.when == "call" or report.failed):
        report.sections.append(("rig steps", log.text()))
    if report.failed:
        for b in item.stash.get(_BOARDS, []):
            if b.console_path.exists():
                tail = b.console_path.read_text(errors="replace").splitlines()[-200:]
                report.sections.append((f"console {b.name}", "\n".join(tail)))


@pytest.fixture(scope="session")
def qlink_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real qlink server (real TLS, CA and managed Mosquitto) for the session."""
    from hil.serverproc import ServerProcess

    proc = ServerProcess(tmp_path_factory.mktemp("qlink-rig-server")).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def qlink_broker(qlink_server: ServerProcess) -> tuple[str, int]:
    """(host, port) of qlink_server's MQTT broker."""
    return ("localhost", qlink_server.broker_port)


def _emulated(request: pytest.FixtureRequest, root: Path, name: str) -> EmulatedBoard:
    from hil.emulated import EmulatedBoard

    b = EmulatedBoard(root, name)
    request.node.stash.setdefault(_BOARDS, []).append(b)
    request.addfinalizer(b.close)
    return b


@pytest.fixture
def qlink_board(
    request: pytest.FixtureRequest,
    qlink_board_ports: list[str],
    qlink_rig_steps: steps.StepLog,
    tmp_path: Path,
) -> EmulatedTarget | SerialTarget:
    """A target: the first --qlink-board port, else a fresh emulated board."""
    from hil.targets import EmulatedTarget, SerialTarget

    if qlink_board_ports:
        return SerialTarget(qlink_board_ports[0])
    return EmulatedTarget(_emulated(request, tmp_path, "board"))


@pytest.fixture
def qlink_fleet(
    request: pytest.FixtureRequest, qlink_rig_steps: steps.StepLog, tmp_path: Path
) -> Callable[[int], list[EmulatedBoard]]:
    """`qlink_fleet(n)` makes n fresh emulated boards."""

    def make(n: int) -> list[EmulatedBoard]:
        return [_emulated(request, tmp_path, f"board-{i:02d}") for i in range(n)]

    return make
