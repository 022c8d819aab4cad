"""A power cut in the middle of an update's download resumes it (docs/ota.md "On the device",
step 3): the board comes back, asks for the payload from where its ota/payload.bin ends, and
the server sends the rest only. The server's count of payload bytes it sent (`bytes_served`)
tells a resumed download (about 1.5 payloads) from one that started over (2 payloads)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hil import scenarios
from hil.serverproc import ServerProcess

pytestmark = pytest.mark.e2e

CHUNK = 1024  # bytes the agent appends to ota/payload.bin per cut-hook call
# The agent's file operations before the first append (firmware/agent/ota.py): ota/job.json
# written and renamed (accept), ota/head.tmp removed, ota/head.json written and renamed (run).
OPS_BEFORE_DOWNLOAD = 5
APPEND = "append ota/payload.bin"
RESUMED = re.compile(r"download from byte (\d+) of (\d+)")


def cli_json(server: ServerProcess, *args: str) -> Any:
    return json.loads(server.cli(*args, "--json").stdout)


def wait_device(server: ServerProcess, rollout: int, device_id: str, state: str) -> None:
    deadline = time.monotonic() + 120
    while True:
        doc = cli_json(server, "ota", "rollout", "status", str(rollout))
        row = next((d for d in doc["devices"] if d["device_id"] == device_id), None)
        if row is not None and row["state"] == state:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"device {device_id[:12]} never {state}: {doc}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def server(make_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = make_server(tmp_path_factory.mktemp("qlink-ota-resume")).start()
    yield proc
    assert proc.stop() in (0, -15), proc.log_tail()


def test_a_cut_at_half_the_download_resumes_it_and_does_not_start_over(
    server: ServerProcess, tmp_path: Path
) -> None:
    server.cli("batch", "create", "resume")
    board, ident = scenarios.registered_board(tmp_path, server, "resumer", "resume")
    device_id = ident["device_id"]
    bundle = tmp_path / "unix-0.2.0.qota"
    server.cli("ota", "build", "-", "--version", "0.2.0", "--board", "unix", "--out", str(bundle))
    release = str(cli_json(server, "ota", "publish", str(bundle))["id"])
    row = next(r for r in cli_json(server, "ota", "list") if r["id"] == release)
    size = int(row["payload_size"])
    chunks = -(-size // CHUNK)
    # The cut lands just before the append of chunk chunks//2 + 1: half the payload is on flash.
    cut_at = OPS_BEFORE_DOWNLOAD + chunks // 2 + 1
    ops = tmp_path / "file-ops.log"
    board.env.update(
        {
            "QLINK_CUT_AT": str(cut_at),
            "QLINK_CUT_FLAG": str(tmp_path / "cut.flag"),
            "QLINK_FILE_OPS": str(ops),
        }
    )
    try:
        board.power_on()
        board.wait_for(r"published seq=1\b", timeout=120)
        before = scenarios.release_files(board)
        rollout = int(
            cli_json(server, "ota", "rollout", "create", release, "--batch", "resume")["id"]
        )
        wait_device(server, rollout, device_id, "committed")
        lines = board.lines()
    finally:
        board.close()

    # The cut landed where it was meant to: on an append, with half the chunks before it.
    logged = [ln.split(" ", 1) for ln in ops.read_text().splitlines()]
    first = [tag for n, tag in logged[:cut_at]]
    assert [int(n) for n, _ in logged[:cut_at]] == list(range(1, cut_at + 1)), logged[:cut_at]
    assert first[-1] == APPEND, f"op {cut_at} was {first[-1]!r}, not an append"
    assert first.count(APPEND) == chunks // 2 + 1
    assert (tmp_path / "cut.flag").exists()
    starts = [(int(m[1]), int(m[2])) for m in map(RESUMED.search, lines) if m]
    assert len(starts) == 2 and starts[0] == (0, size), starts
    resumed = starts[1][0]
    assert starts[1][1] == size
    assert 0.4 * size <= resumed <= 0.55 * size, f"resumed at byte {resumed} of {size}"
    assert resumed <= (chunks // 2) * CHUNK  # what the appends before the cut could write

    # The update committed, with the new version's files.
    manifest = json.loads((server.data_dir / "releases" / release / "manifest.json").read_text())
    assert scenarios.release_files(board) == {f["path"]: f["sha256"] for f in manifest["files"]}
    assert scenarios.release_files(board) != before
    # The server sent the first half once (and what was in flight at the cut), then the rest.
    served = int(
        next(r for r in cli_json(server, "ota", "list") if r["id"] == release)["bytes_served"]
    )
    assert size <= served < 1.6 * size, f"served {served} bytes of a {size}-byte payload"
