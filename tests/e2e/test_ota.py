"""Over-the-air updates on emulated boards running the real firmware against the real server and
broker (docs/ota.md): a release built from the project's firmware, published, rolled out to a
batch through the command channel; boards download it with resume, verify and decrypt it into
their staging area, swap it in at boot, commit after a health check, and roll back by
themselves when the new version never gets there."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hil import scenarios
from hil.emulated import EmulatedBoard
from hil.serverproc import ServerProcess

pytestmark = pytest.mark.e2e


class Ota:
    def __init__(self, server: ServerProcess, root: Path) -> None:
        self.server, self.root = server, root
        self.boards: list[EmulatedBoard] = []

    def board(self, name: str, batch: str) -> tuple[EmulatedBoard, str]:
        b, ident = scenarios.registered_board(self.root, self.server, name, batch)
        self.boards.append(b)
        return b, ident["device_id"]

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.server.cli(*args, "--json").stdout)

    def release(self, version: str, tree: Path | None = None, min_version: str = "0.0.0") -> str:
        out = self.root / f"unix-{version}.qota"
        self.server.cli(
            "ota",
            "build",
            str(tree) if tree else "-",
            "--version",
            version,
            "--board",
            "unix",
            "--min-version",
            min_version,
            "--out",
            str(out),
        )
        doc = self.cli_json("ota", "publish", str(out))
        return str(doc["id"])

    def rollout(self, release: str, batch: str, max_failures: int = 0) -> int:
        doc = self.cli_json(
            "ota",
            "rollout",
            "create",
            release,
            "--batch",
            batch,
            "--max-failures",
            str(max_failures),
        )
        return int(doc["id"])

    def status(self, rollout: int) -> dict[str, Any]:
        doc: dict[str, Any] = self.cli_json("ota", "rollout", "status", str(rollout))
        return doc

    def wait_device(
        self, rollout: int, device_id: str, states: set[str], timeout: float
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            doc = self.status(rollout)
            row: dict[str, Any] | None = next(
                (d for d in doc["devices"] if d["device_id"] == device_id), None
            )
            if row is not None and row["state"] in states:
                return row
            if time.monotonic() > deadline:
                raise AssertionError(f"device {device_id[:12]} not in {states}: {doc}")
            time.sleep(0.5)

    def manifest(self, release: str) -> dict[str, Any]:
        raw = (self.server.data_dir / "releases" / release / "manifest.json").read_bytes()
        doc: dict[str, Any] = json.loads(raw)
        return doc


def matches(board: EmulatedBoard, manifest: dict[str, Any]) -> bool:
    want = {f["path"]: f["sha256"] for f in manifest["files"]}
    return scenarios.release_files(board) == want


@pytest.fixture(scope="module")
def ota(make_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ota]:
    server = make_server(tmp_path_factory.mktemp("qlink-ota")).start()
    o = Ota(server, tmp_path_factory.mktemp("ota-boards"))
    yield o
    for b in o.boards:
        b.power_off()
    assert server.stop() in (0, -15), server.log_tail()


def test_a_rollout_moves_a_board_to_the_new_version_and_it_commits(ota: Ota) -> None:
    ota.server.cli("batch", "create", "fleet")
    board, device_id = ota.board("updater", "fleet")
    board.power_on()
    board.wait_for(r"published seq=1\b", timeout=120)
    before = scenarios.release_files(board)
    release = ota.release("0.2.0")
    rollout = ota.rollout(release, "fleet")
    board.wait_for(r"boot: ota swap to 0\.2\.0", timeout=120)
    ota.wait_device(rollout, device_id, {"committed"}, timeout=120)
    assert matches(board, ota.manifest(release))
    assert scenarios.release_files(board) != before
    # The new version is what runs and what the device announces.
    tap_rows = ota.cli_json("devices")
    row = next(r for r in tap_rows if r["device_id"] == device_id)
    assert row["state"] == "onboarded"
    assert ota.status(rollout)["state"] == "done"
    assert not (board.fs / "ota" / "old").exists() and not (board.fs / "ota" / "new").exists()
    assert (board.fs / "data" / "fw_min").read_text().strip() == "0.2.0"


def test_a_version_that_never_commits_is_rolled_back_and_the_rollout_halts(
    ota: Ota, tmp_path: Path
) -> None:
    ota.server.cli("batch", "create", "canary")
    board, device_id = ota.board("canary", "canary")
    board.power_on()
    board.wait_for(r"published seq=1\b", timeout=120)
    before = scenarios.release_files(board)
    # A release whose main.py never starts the agent: it can never pass the health check.
    from host.server.releases import build_tree

    tree = tmp_path / "tree"
    build_tree("unix", "0.3.0", tree)
    (tree / "main.py").write_text("print('broken main')\n")
    release = ota.release("0.3.0", tree)
    rollout = ota.rollout(release, "canary")
    board.wait_for(r"boot: ota swap to 0\.3\.0", timeout=120)
    board.wait_for(r"broken main", timeout=30)
    # A watchdog would reset the board; the rig power-cycles it until boot.py gives up.
    for _ in range(3):
        board.power_cycle()
        if any("boot: rolled back" in ln for ln in board.lines()):
            break
        time.sleep(1)
    board.wait_for(r"published seq=\d+", timeout=120)
    row = ota.wait_device(rollout, device_id, {"rolled_back"}, timeout=60)
    assert row["reason"] == "trial_failed"
    assert scenarios.release_files(board) == before
    assert ota.status(rollout)["state"] == "halted"
