"""The rig's pytest plugin (registered as the `pytest11` entry point `qlink`).

`--board PORT` selects a real board on a serial port; without it, tests run on emulated boards.
"""

from __future__ import annotations

import pytest


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
