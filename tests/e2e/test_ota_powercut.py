"""Power cuts at seeded-random instants of an update, across its four phases (docs/ota.md
"On the device"): the download (the agent's appends to ota/payload.bin), the staging (the
agent's ota/new/, head and state writes), the swap (boot.py) and the first boot of the new
version (the agent's commit and cleanup). After each cut the board comes back by itself (the
rig's relay restarts a process that died while powered) and, once boot.py is done, runs one
complete version: every file of the release roots matches one manifest, the old version's
before the staging's commit point, the new one's after. The update then completes.

An instant is a file operation of the emulated board's cut hook (boards/unix/board.py
`file_op`), picked from those an uncut reference update logs. The hook counts the operations
of one process, and the operations of the process that downloads and stages, and of the one
boot.py swaps in, are the same in every update of the same shape (but for a few appends: the
link splits the payload a little differently each time); so one update takes two cuts: one
while it downloads or stages, one in the swap or the first boot.

QLINK_OTA_CUTS (default 6, two per update) sets the number of cuts (`make soak`: 50) and
QLINK_OTA_SEED the seed; a failure message names, for every cut so far, the seed, the update,
the phase, the operation count and the operation it landed on: the same seed cuts at the same
counts again.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hil import scenarios, unixport
from hil.emulated import EmulatedBoard
from hil.serverproc import ServerProcess

pytestmark = pytest.mark.e2e

SEED = int(os.environ.get("QLINK_OTA_SEED") or 20261203)
CUTS = int(os.environ.get("QLINK_OTA_CUTS") or 6)
FIRST_PROCESS = ("download", "staging")  # phases of the process that downloads and stages
SECOND_PROCESS = ("swap", "first_boot")  # phases of the process boot.py swaps in
AGENT_LINE = r"I agent: device "  # the agent's first line: boot.py is done
SOFT_REBOOT = "MPY: soft reboot"  # the relay's line when a process died while powered
WAIT = 120.0  # seconds any one step of an update may take
# The accepted offer's job file (docs/ota.md step 1), written and renamed into place before the
# command's seq is recorded; a cut at its first write has a test of its own (below).
JOB_OPS = ("write ota/job.json", "rename ota/job.json")


def version(n: int) -> str:
    # Every release version has the same length, so every release's files, payload and file
    # operations have the same sizes and counts as the reference's.
    return f"1.0.{10 + n}"


@dataclass
class Cut:
    update: int
    phase: str
    op: int  # the cut hook's count in its process
    tag: str  # the reference update's operation at that count
    landed: str = ""  # the operation the cut hook logged at that count in this update
    outcome: str = "not reached"

    def __str__(self) -> str:
        where = f"landed on {self.landed!r}" if self.landed else f"reference {self.tag!r}"
        return (
            f"seed={SEED} update={self.update} ({version(self.update + 1)}) phase={self.phase} "
            f"op={self.op} {where}: {self.outcome}"
        )


@dataclass
class Rig:
    server: ServerProcess
    root: Path
    board: EmulatedBoard
    device_id: str
    base: Path  # the project's firmware tree, built once; each release re-versions it
    cuts: list[Cut] = field(default_factory=list)
    rollout_id: int = 0

    def report(self) -> str:
        return "cuts so far:\n" + "\n".join(f"  {c}" for c in self.cuts)

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.server.cli(*args, "--json").stdout)

    def release(self, v: str) -> tuple[str, dict[str, str]]:
        """Publish the base tree as version v: (release ID, its files' SHA-256 by path)."""
        tree = self.root / f"tree-{v}"
        shutil.copytree(self.base, tree)
        src = self.root / "version.py"
        src.write_text(f'VERSION = "{v}"\n')
        # Compiled as the rig compiles a board's image: for the emulated board's architecture.
        dst = tree / "agent" / "version.mpy"
        cmd = [*unixport.mpy_cross_cmd(), "-s", "agent/version.py", "-o", str(dst), str(src)]
        subprocess.run(cmd, check=True, capture_output=True)
        out = self.root / f"unix-{v}.qota"
        self.server.cli(
            "ota", "build", str(tree), "--version", v, "--board", "unix", "--out", str(out)
        )
        rid = str(self.cli_json("ota", "publish", str(out))["id"])
        manifest = json.loads(
            (self.server.data_dir / "releases" / rid / "manifest.json").read_text()
        )
        return rid, {f["path"]: f["sha256"] for f in manifest["files"]}

    def running(self) -> dict[str, str]:
        return scenarios.release_files(self.board)

    def line_after(self, pattern: str, start: int, what: str) -> int:
        """Index of the first console line from `start` on that matches pattern."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + WAIT
        while True:
            lines = self.board.lines()
            for i in range(start, len(lines)):
                if rx.search(lines[i]):
                    return i
            if time.monotonic() > deadline:
                tail = "\n".join(lines[-30:])
                raise AssertionError(f"{what}: no line {pattern!r}\n{self.report()}\n{tail}")
            time.sleep(0.01)

    def update_to(self, rid: str, states: set[str], timeout: float = WAIT) -> str:
        """Wait until the device's state in the newest rollout is one of `states`."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.cli_json("ota", "rollout", "status", str(self.rollout_id))["devices"]
            row = next((d for d in rows if d["device_id"] == self.device_id), None)
            if row is not None and row["state"] in states:
                return str(row["state"])
            if time.monotonic() > deadline:
                raise AssertionError(f"{rid}: device not in {states}: {row}\n{self.report()}")
            time.sleep(0.3)


def processes(log: Path) -> list[list[str]]:
    """The cut hook's log split by process (its count starts at 1 in each): the tags."""
    out: list[list[str]] = []
    for line in log.read_text().splitlines():
        n, tag = line.split(" ", 1)
        if int(n) == 1:
            out.append([])
        assert int(n) == len(out[-1]) + 1, f"{log}: count out of order at {line!r}"
        out[-1].append(tag)
    return out


def phases(first: list[str], second: list[str]) -> dict[str, list[tuple[int, str]]]:
    """The (count, tag) of each phase's operations in the reference update's two processes."""
    out: dict[str, list[tuple[int, str]]] = {p: [] for p in FIRST_PROCESS + SECOND_PROCESS}
    for n, tag in enumerate(first, 1):
        if tag in JOB_OPS:
            # The board resumes so fast from there that the rig could not stop it in time to
            # read its files; the test after this one cuts there.
            continue
        out["download" if tag == "append ota/payload.bin" else "staging"].append((n, tag))
    # boot.py never touches data/: the agent's commit starts with data/fw_min.
    agent = next(i for i, tag in enumerate(second) if tag.split(" ", 1)[1].startswith("data/"))
    for n, tag in enumerate(second, 1):
        out["swap" if n <= agent else "first_boot"].append((n, tag))
    return out


@pytest.fixture(scope="module")
def rig(make_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    from host.server.releases import build_tree

    server = make_server(tmp_path_factory.mktemp("qlink-ota-cuts")).start()
    root = tmp_path_factory.mktemp("ota-cuts")
    server.cli("batch", "create", "cuts")
    board, ident = scenarios.registered_board(root, server, "cut", "cuts")
    build_tree("unix", version(0), root / "base")
    r = Rig(server, root, board, ident["device_id"], root / "base")
    yield r
    board.close()
    assert server.stop() in (0, -15), server.log_tail()


def start(rig: Rig, env: dict[str, str]) -> None:
    """Power the board on with the cut hook's environment and wait until it publishes."""
    rig.board.power_off()
    rig.board.env = env
    rig.board.power_on()
    rig.board.wait_for(r"published seq=\d+", timeout=WAIT)


def offer(rig: Rig, rid: str) -> None:
    doc = rig.cli_json("ota", "rollout", "create", rid, "--batch", "cuts")
    rig.rollout_id = int(doc["id"])


def wait_cut(rig: Rig, cut: Cut, flag: Path, ops: Path, process: int) -> list[str]:
    """Wait for the cut; -> the operations its process logged (the last is the one cut)."""
    deadline = time.monotonic() + WAIT
    while not flag.exists():
        assert time.monotonic() < deadline, f"cut never happened: {cut}\n{rig.report()}"
        time.sleep(0.01)
    logged = processes(ops)
    done = logged[process] if len(logged) > process else []
    assert len(done) == cut.op, f"{cut}: its process logged {len(done)} operations\n{rig.report()}"
    cut.landed = done[-1]
    return done


def check_after(
    rig: Rig,
    cut: Cut,
    mark: int,
    boots: int,
    want: dict[str, str],
    other: dict[str, str],
    env: dict[str, str],
) -> int:
    """The board came back from `cut` with one complete version, `want`; -> the index of the
    agent's first line after it.

    The restarted process (the relay's boot number `boots`) is stopped (SIGSTOP) while its files
    are read: its boot.py is done (the agent printed its first line) and no later boot.py can
    start meanwhile. `env` is set for the processes the relay starts from then on."""
    back = rig.line_after(re.escape(SOFT_REBOOT), mark, f"no restart after {cut}")
    ready = rig.line_after(AGENT_LINE, back + 1, f"no agent after {cut}")
    relay = rig.board.relay
    pid = relay.pid
    assert pid is not None, f"{cut}: the board is off\n{rig.report()}"
    os.kill(pid, signal.SIGSTOP)
    try:
        now = relay.boots
        files = rig.running()
        rig.board.env = env
    finally:
        os.kill(pid, signal.SIGCONT)
    assert now == boots, f"{cut}: boot {now} already, not {boots}: the rig was late\n{rig.report()}"
    lines = rig.board.lines()[back:ready]
    assert not any("roll" in ln for ln in lines), f"{cut}: boot.py rolled back\n" + "\n".join(lines)
    if files == want:
        cut.outcome = "came back with the expected version"
        return ready
    which = "the other version" if files == other else "no complete version"
    diff = sorted(p for p in set(files) | set(want) if files.get(p) != want.get(p))
    cut.outcome = f"came back with {which}: {len(diff)} files differ, e.g. {diff[:5]}"
    raise AssertionError(f"{cut}\n{rig.report()}")


def test_power_cuts_anywhere_in_an_update_leave_one_complete_version_and_it_completes(
    rig: Rig,
) -> None:
    rng = random.Random(SEED)
    board = rig.board
    # The reference: an uncut update, its file operations logged per process.
    ref_log = rig.root / "ops-reference.log"
    rid, new = rig.release(version(1))
    start(rig, {"QLINK_FILE_OPS": str(ref_log)})
    old = rig.running()
    offer(rig, rid)
    rig.update_to(rid, {"committed"})
    procs = processes(ref_log)
    assert len(procs) == 2, f"reference update ran {len(procs)} processes: {[p[:3] for p in procs]}"
    ref = phases(procs[0], procs[1])
    assert all(ref.values()), {k: len(v) for k, v in ref.items()}
    deadline = time.monotonic() + WAIT
    while (board.fs / "ota" / "state.json").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert rig.running() == new

    u = 0
    with ThreadPoolExecutor(1) as pool:
        while len(rig.cuts) < CUTS:
            u += 1
            old = new
            rid, new = rig.release(version(u + 1))
            assert new != old
            cut_update(rig, pool, rng, ref, u, rid, old, new)
    print(rig.report())


def cut_update(
    rig: Rig,
    pool: ThreadPoolExecutor,
    rng: random.Random,
    ref: dict[str, list[tuple[int, str]]],
    u: int,
    rid: str,
    old: dict[str, str],
    new: dict[str, str],
) -> None:
    """One update from `old` to `new` (release `rid`) with one or two cuts."""
    board = rig.board
    first = Cut(u, FIRST_PROCESS[u % 2], *rng.choice(ref[FIRST_PROCESS[u % 2]]))
    rig.cuts.append(first)
    ops = rig.root / f"ops-{u}.log"
    flags = [rig.root / f"cut-{u}-{i}.flag" for i in (1, 2)]
    env = {"QLINK_FILE_OPS": str(ops)}
    start(rig, {**env, "QLINK_CUT_AT": str(first.op), "QLINK_CUT_FLAG": str(flags[0])})
    assert rig.running() == old, rig.report()
    boots = board.relay.boots
    offered = pool.submit(offer, rig, rid)  # the board acts on the offer before the CLI exits
    # Cut 1, while the first process downloads or stages. Before the staging's commit point
    # (ota/state.json renamed to "staged", docs/ota.md step 4) the running files stay the old
    # version's; after it the restarted process's boot.py swaps in the new version itself, so no
    # process of its own is left for a second cut.
    done = wait_cut(rig, first, flags[0], ops, 0)
    staged = "rename ota/state.json" in done[:-1]
    second = None
    if not staged and len(rig.cuts) < CUTS:
        p2 = SECOND_PROCESS[(u + u // 2) % 2]
        second = Cut(u, p2, *rng.choice(ref[p2]))
        rig.cuts.append(second)
    # The restarted process runs with the first cut's settings (its flag is there: no cut);
    # the process that the reset for boot.py starts gets the second cut's.
    env2 = env
    if second is not None:
        env2 = {**env, "QLINK_CUT_AT": str(second.op), "QLINK_CUT_FLAG": str(flags[1])}
    mark = check_after(rig, first, 0, boots + 1, new if staged else old, new, env2)
    offered.result()
    if second is not None:
        # Cut 2, in boot.py's swap or the agent's first boot: boot.py completes the swap (or
        # runs it again) before main.py runs, so the new version is in place. Boots: the first
        # process, its restart, the reset for boot.py, its restart.
        wait_cut(rig, second, flags[1], ops, 2)
        check_after(rig, second, mark + 1, boots + 3, new, old, env)
    rig.update_to(rid, {"committed"})
    deadline = time.monotonic() + WAIT
    while (board.fs / "ota" / "state.json").exists():
        assert time.monotonic() < deadline, f"ota/ never cleaned up\n{rig.report()}"
        time.sleep(0.2)
    assert rig.running() == new, f"update {u} committed with other files\n{rig.report()}"
    for c in (first, second):
        if c is not None:
            c.outcome += "; update committed"


def test_a_cut_before_the_job_is_on_flash_does_not_lose_the_offer(rig: Rig) -> None:
    # The device writes the job before it records the offer's seq (agent/command.py): a cut
    # between the two leaves a job that resumes and an offer the server's resend renews; a cut
    # before the job is written leaves the offer unrecorded, and the resend is taken anew.
    rid, new = rig.release(version(89))  # above every version the test before it installs
    flag, ops = rig.root / "cut-job.flag", rig.root / "ops-job.log"
    start(rig, {"QLINK_FILE_OPS": str(ops), "QLINK_CUT_AT": "1", "QLINK_CUT_FLAG": str(flag)})
    old = rig.running()
    cut = Cut(88, "offer", 1, JOB_OPS[0])
    rig.cuts = [cut]
    offer(rig, rid)
    try:
        wait_cut(rig, cut, flag, ops, 0)
        assert cut.landed == JOB_OPS[0], rig.report()
        # Back on the old version (nothing was staged), online, and the server's resend of the
        # offer is taken: the update completes.
        rig.update_to(rid, {"committed"})
        assert rig.running() == new, rig.report()
        lines = rig.board.lines()
        assert not any("replayed" in ln or "roll" in ln for ln in lines), "\n".join(lines)
        assert old != new
    finally:
        # A rollout left open would hold the batch; a finished one cannot be aborted.
        rig.server.cli("ota", "rollout", "abort", str(rig.rollout_id), check=False)
