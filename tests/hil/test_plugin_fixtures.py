"""The rig's pytest fixtures: `qlink_board` is a target the protocols describe; rig actions are
steps."""

from __future__ import annotations

from collections.abc import Callable

from hil import protocols, steps
from hil.emulated import EmulatedBoard
from hil.targets import EmulatedTarget


def test_board_fixture_is_an_emulated_target_with_every_protocol(
    qlink_board: EmulatedTarget,
) -> None:
    for proto in (protocols.Console, protocols.FileTransfer, protocols.Reset, protocols.Power):
        assert isinstance(qlink_board, proto)
    qlink_board.power_on()
    assert qlink_board.exec("print(7 * 6)") == "42\n"
    names = [s.name for s in steps.current().steps]
    assert names[:2] == ["power_on", "mpremote"]
    assert steps.current().steps[1].args["args"] == "exec print(7 * 6)"
    assert all(s.ok and s.duration_s >= 0 for s in steps.current().steps)


def test_fleet_fixture_makes_n_boards_with_their_own_ports(
    qlink_fleet: Callable[[int], list[EmulatedBoard]],
) -> None:
    boards = qlink_fleet(3)
    assert len({b.port for b in boards}) == 3
    assert len({b.die_path.read_text() for b in boards}) == 3  # three dies
