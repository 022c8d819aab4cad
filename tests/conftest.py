"""Settings for every test of the project.

The rig's pytest plugin (hil/pytest_plugin.py, loaded through qlink's `pytest11` entry point)
prefixes everything it adds with `qlink` and acts only on tests that use its fixtures. The
project's own runs keep two habits on top of it: `--board PORT` is another name for
`--qlink-board PORT` (`qlink rig run --board` passes it), and every test gets a fresh rig-steps
log, so that the scenarios, which drive hil directly, report their timed steps too.
"""

from __future__ import annotations

import pytest

from hil import steps


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("qlink").addoption(
        "--board",
        action="append",
        default=[],
        dest="qlink_board",
        metavar="PORT",
        help="the same as --qlink-board",
    )


@pytest.fixture(autouse=True)
def _rig_steps(qlink_rig_steps: steps.StepLog) -> steps.StepLog:
    return qlink_rig_steps
