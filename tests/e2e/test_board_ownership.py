"""Ownership transfer, re-enrolment and decommissioning on emulated boards running the real
firmware against the real server and broker: the board moves to an identity the old owner
cannot link, re-enrols under a new identity linked to its record, and, decommissioned, can
neither rebuild its old key nor onboard again."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hil import scenarios
from hil.emulated import EmulatedBoard
from hil.serverproc import ServerProcess

pytestmark = pytest.mark.e2e


class Owners:
    def __init__(self, server: ServerProcess, root: Path) -> None:
        self.server, self.root = server, root
        self.boards: list[EmulatedBoard] = []

    def board(self, name: str) -> tuple[EmulatedBoard, str]:
        b, ident = scenarios.registered_board(
            self.root, self.server, name, "old-line", tenant="oldco"
        )
        self.boards.append(b)
        b.power_on()
        b.wait_for(r"published seq=2\b", timeout=120)
        return b, ident["device_id"]

    def json(self, *args: str) -> Any:
        return json.loads(self.server.cli(*args, "--json").stdout)


@pytest.fixture(scope="module")
def owners(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Owners]:
    for tenant, batch in (("oldco", "old-line"), ("newco", "new-line")):
        server.ensure_tenant(tenant)
        server.cli("batch", "create", batch, "--tenant", tenant)
    o = Owners(server, tmp_path_factory.mktemp("owners"))
    yield o
    for b in o.boards:
        b.power_off()


def test_a_transferred_board_moves_to_an_identity_the_old_owner_cannot_link(
    owners: Owners,
) -> None:
    board, old_id = owners.board("sold")
    before = owners.json("devices", "--tenant", "oldco")
    old = next(d for d in before if d["device_id"] == old_id)
    code = owners.json("device", "transfer", old_id)["code"]
    claim = owners.json("device", "claim", code, "--tenant", "newco", "--batch", "new-line")
    board.wait_for(r"I agent: moved to owner epoch 1", timeout=120)
    board.wait_for(r"I onboard: certificate stored", timeout=120)
    board.wait_for(r"published seq=2\b", timeout=60)
    newco = owners.json("devices", "--tenant", "newco")
    [moved] = [d for d in newco if d["batch"] == "new-line"]
    assert moved["device_id"] not in (old_id,) and moved["state"] == "onboarded"
    ids = [ln for ln in board.lines() if "I agent: device " in ln]
    assert ids[-1].endswith(moved["device_id"])
    # The old identity is revoked; the old tenant keeps it and its history, nothing newer.
    oldco = {d["device_id"]: d for d in owners.json("devices", "--tenant", "oldco")}
    assert oldco[old_id]["state"] == "revoked"
    assert moved["device_id"] not in oldco
    assert moved["serial"] != old["serial"]
    # Nothing of the old identity in what the new owner sees: its device, its audit, its claim.
    commands = owners.json("device", "commands", moved["device_id"])
    seen_by_new = json.dumps([moved, owners.json("audit", "--tenant", "newco"), claim, *commands])
    for trace in (old_id, old["serial"]):
        assert trace not in seen_by_new
    seen_by_old = json.dumps(owners.json("audit", "--tenant", "oldco"))
    assert moved["device_id"] not in seen_by_old and moved["serial"] not in seen_by_old
    # A reused code binds nothing.
    again = owners.server.cli(
        "device", "claim", code, "--tenant", "newco", "--batch", "new-line", check=False
    )
    assert again.returncode != 0


def test_a_decommissioned_board_cannot_rebuild_its_key_or_onboard(owners: Owners) -> None:
    board, device_id = owners.board("retired")
    out = owners.json("device", "decommission", device_id)
    assert out["confirmed"] is True and out["device"]["state"] == "revoked"
    board.wait_for(r"E agent: safe mode: decommissioned", timeout=30)
    assert not (board.fs / "data" / "helper.bin").exists()
    board.power_cycle()
    # Without its helper data the board can only enrol a new identity, which nobody
    # registered: the old key is gone from this flash, and the server refuses what is left.
    board.wait_for(r"safe mode|I agent: device ([0-9a-f]{64})", timeout=60)
    ids = [ln.split()[-1] for ln in board.lines() if "I agent: device " in ln]
    assert device_id not in ids[1:]
    assert not any("certificate stored" in ln for ln in board.lines()[-20:])


@pytest.fixture(scope="module")
def policed(make_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Owners]:
    """A server whose re-enrolment policy is on: a die past 30 % of its budget re-enrols.
    A fresh die's report uses up to about 20 % (at 20 a fresh board was re-enrolled before
    the test aged it), the die aged 10 years at 85 °C about 40 %."""
    server = make_server(
        tmp_path_factory.mktemp("qlink-policed"),
        extra_args=["--auto-reenrol", "--puf-drift", "30"],
    ).start()
    server.ensure_tenant("oldco")
    server.cli("batch", "create", "old-line", "--tenant", "oldco")
    o = Owners(server, tmp_path_factory.mktemp("policed-boards"))
    yield o
    for b in o.boards:
        b.power_off()
    assert server.stop() in (0, -15), server.log_tail()


def _age(board: EmulatedBoard, **die: float) -> None:
    doc = json.loads(board.die_path.read_text())
    doc.update(die)
    board.die_path.write_text(json.dumps(doc))


def test_an_ageing_die_is_reenrolled_by_policy_and_keeps_its_record(policed: Owners) -> None:
    board, old_id = policed.board("ageing")
    _age(board, age_years=10, temperature_c=85)
    board.power_cycle()
    # Its PUF report at the next session crosses the threshold: the server commands re-enrolment,
    # which the board records for its next power-on.
    board.wait_for(r"I agent: re-enrolment recorded \(seq=\d+\)", timeout=120)
    board.power_cycle()
    board.wait_for(r"I agent: re-enrolled: owner epoch 0 of new helper data", timeout=120)
    board.wait_for(r"published seq=2\b", timeout=120)
    devices = {d["device_id"]: d for d in policed.json("devices", "--tenant", "oldco")}
    [new] = [d for d in devices.values() if d["predecessor"] == old_id]
    assert new["state"] == "onboarded" and new["batch"] == "old-line"
    assert (
        devices[old_id]["state"] == "revoked" and devices[old_id]["successor"] == new["device_id"]
    )
    # No import: the new identity came from the board's proof signed with the old key.
    audit = policed.json("audit", "--tenant", "oldco")
    assert not any(
        a["action"] == "batch.import" and a["at"] > devices[old_id]["onboarded_at"] for a in audit
    )
    actors = {a["actor"] for a in audit if a["action"] == "device.command"}
    assert "policy:puf-drift" in actors
    # The CLI lists by the running server's threshold (30 %), not its own default (50 %).
    assert 30 <= devices[old_id]["puf_used_pct"] < 100
    drifting = policed.json("devices", "--drifting", "--tenant", "oldco")
    assert old_id in [d["device_id"] for d in drifting]
