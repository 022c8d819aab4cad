"""Rig scenarios on emulated boards driven through their serial ports (the pty relay), against
the real server and broker: (a) power cycles and idempotent onboarding, (d) corrupted flash
contents -> safe mode with the REPL reachable, or onboarding again."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil import scenarios
from hil.emulated import EmulatedBoard
from hil.serverproc import ServerProcess
from hil.targets import EmulatedTarget, mpremote_exe

pytestmark = pytest.mark.e2e


class Rig:
    def __init__(self, root: Path, server: ServerProcess) -> None:
        self.root = root
        self.server = server
        self.made: list[EmulatedBoard] = []

    def board(self, name: str) -> tuple[EmulatedBoard, dict[str, str]]:
        b, ident = scenarios.registered_board(self.root, self.server, name, "rig")
        self.made.append(b)
        return b, ident

    def rows(self, device_id: str) -> list[tuple[object, ...]]:
        with sqlite3.connect(self.server.data_dir / "registry.sqlite") as db:
            return db.execute(
                "SELECT device_id, state FROM devices WHERE device_id = ?", (device_id,)
            ).fetchall()


@pytest.fixture(scope="module")
def rig(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    server.cli("batch", "create", "rig")
    r = Rig(tmp_path_factory.mktemp("rig"), server)
    yield r
    for b in r.made:
        b.close()


def test_a_identity_and_registration_survive_three_power_cycles_onboarding_is_idempotent(
    rig: Rig,
) -> None:
    board, ident = rig.board("cycler")
    board.power_on()
    board.wait_for(r"I onboard: certificate stored", timeout=120)
    board.wait_for(r"published seq=1\b", timeout=60)
    cert = (board.fs / "data" / "cert.der").read_bytes()
    for _ in range(3):
        board.power_cycle()
        m = board.wait_for(r"I agent: device ([0-9a-f]{64})", timeout=60)
        assert m.group(1) == ident["device_id"]
        board.wait_for(r"published seq=1\b", timeout=60)
        assert not any(" onboard: hello" in ln for ln in board.lines())
    # Onboarding again (the stored result lost) gives the same registration: one row.
    board.power_off()
    (board.fs / "data" / "onboard.json").unlink()
    board.power_on()
    board.wait_for(r"I onboard: certificate stored", timeout=120)
    board.wait_for(r"published seq=1\b", timeout=60)
    assert rig.rows(ident["device_id"]) == [(ident["device_id"], "onboarded")]
    assert (board.fs / "data" / "cert.der").read_bytes() == cert


def test_d_corrupt_certificate_is_detected_and_the_board_onboards_again(rig: Rig) -> None:
    board, ident = rig.board("corrupt-cert")
    board.power_on()
    board.wait_for(r"published seq=1\b", timeout=120)
    board.power_off()
    cert = board.fs / "data" / "cert.der"
    data = bytearray(cert.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit-group in flash
    cert.write_bytes(bytes(data))
    board.power_on()
    board.wait_for(r"W store: stored onboarding data unusable", timeout=60)
    board.wait_for(r"published seq=1\b", timeout=120)
    assert rig.rows(ident["device_id"]) == [(ident["device_id"], "onboarded")]


@pytest.mark.parametrize(
    ("what", "damage", "reason"),
    [
        ("config.json", b'{"server": "https://loc', "config unusable (ConfigError"),
        ("data/helper.bin", None, "identity unusable ("),
    ],
)
def test_d_corrupt_config_or_helper_data_is_safe_mode_with_the_repl_reachable(
    rig: Rig, what: str, damage: bytes | None, reason: str
) -> None:
    board, _ = rig.board("safe-" + what.replace("/", "-").replace(".", "-"))
    board.power_on()
    board.wait_for(r"I agent: device", timeout=120)
    board.power_off()
    path = board.fs / what
    if damage is None:
        raw = bytearray(path.read_bytes())
        raw[4 : len(raw) - 4] = bytes(len(raw) - 8)  # helper data zeroed: no identity from it
        damage = bytes(raw)
    path.write_bytes(damage)
    board.power_on()
    board.wait_for(r"E agent: safe mode: " + reason.replace("(", r"\("), timeout=120)
    boots = board.relay.boots
    # No boot loop: the board sits at its REPL, and the rig reaches it through the serial port.
    t = EmulatedTarget(board)
    out = subprocess.run(
        [mpremote_exe(), "connect", board.port, "resume", "exec", "print('repl', 6 * 7)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "repl 42\n"
    assert board.relay.boots == boots
    assert what.split("/")[-1] in t.ls("data" if what.startswith("data/") else "")


def test_f_fleet_of_twenty_boards_onboards_concurrently(rig: Rig) -> None:
    fleet = [rig.board(f"fleet-{i:02d}") for i in range(20)]
    for b, _ in fleet:
        b.power_on()
    for b, ident in fleet:
        b.wait_for(r"published seq=1\b", timeout=300)
        assert rig.rows(ident["device_id"]) == [(ident["device_id"], "onboarded")]
    for b, _ in fleet:
        b.close()
