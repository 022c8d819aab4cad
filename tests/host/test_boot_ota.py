"""boot.py's OTA swap, trial and rollback (docs/ota.md "On the device"), on the Unix port.

Each test builds a board filesystem with a running version (0.1.0, the factory image) and a
staged one (0.2.0: ota/new/, ota/head.json, ota/state.json "staged"), runs
`micropython -X heapsize=65536 -c "import boot"` in it as the board does at power-on, and reads
the tree back. Every move (the backup into ota/old/, the swap, the rollback) must be a rename:
the tests compare inode numbers before and after, and the file operations the unix board's
file_op hook records (QLINK_FILE_OPS). The power-cut tests kill the process before each file
operation in turn (QLINK_CUT_AT) and check that the next boot leaves exactly one complete
version, and that later boots converge.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil import emulated, unixport

HEAP = 65536  # the identity's budget: boot.py must fit in the smallest heap the firmware has
BOARD_PY = (unixport.BOARDS / "unix" / "board.py").read_bytes()
SILICON_PY = (unixport.BOARDS / "unix" / "silicon.py").read_bytes()

OLD: dict[str, bytes] = {
    "agent/__init__.py": b"",
    "agent/version.py": b'VERSION = "0.1.0"\n',
    "agent/gone.py": b"GONE = 1\n",  # not in 0.2.0: removed by the swap, back after a rollback
    "agent/sub/deep.py": b"DEEP = 1\n",  # its folder goes with it
    "agent/big.py": b"#" + b"a" * 1498 + b"\n",  # three chunks, the last one partial
    "agent/exact.py": b"#" + b"e" * 1022 + b"\n",  # exactly two chunks
    "qdid/__init__.py": b"",
    "qdid/same.py": b"SAME = 1\n",
    "main.py": b'print("main 0.1.0")\n',
    "board.py": BOARD_PY,
    "silicon.py": SILICON_PY,
}
NEW: dict[str, bytes] = {
    "agent/__init__.py": b"",
    "agent/version.py": b'VERSION = "0.2.0"\n',
    "agent/big.py": b"#" + b"b" * 2054 + b"\n",
    "agent/exact.py": b"#" + b"f" * 510 + b"\n",
    "qdid/__init__.py": b"",
    "qdid/same.py": b"SAME = 1\n",
    "qdid/new.py": b"NEW = 1\n",
    "lib/extra.py": b"EXTRA = 1\n",  # a release root the factory image lacks
    "main.py": b'print("main 0.2.0")\n',
    "board.py": BOARD_PY + b'RELEASE = "0.2.0"\n',  # the HAL changes too
    "silicon.py": SILICON_PY,
}
# Files of the board that no version lists: boot.py must never touch them.
OTHERS: dict[str, bytes] = {
    "config.json": b'{"server": "https://localhost:8443", "root_ca": "ca.der"}',
    "ca.der": b"\x30\x03\x02\x01\x00",
    "enrol.py": b"# factory step\n",
    "data/helper.bin": b"\x05\x0a\x1f\x83helper",
}
_NOT_RELEASE = ("boot.py", *OTHERS)


def manifest(files: dict[str, bytes], version: str = "0.2.0") -> str:
    """The release manifest of docs/ota.md "Release": compact, keys in order, sorted paths."""
    entries = [
        {"path": p, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()}
        for p, b in sorted(files.items())
    ]
    doc = {"v": 1, "version": version, "min_version": "0.0.0", "board": "unix", "files": entries}
    return json.dumps(doc, separators=(",", ":"))


def write(fs: Path, path: str, data: bytes) -> None:
    f = fs / path
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(data)


def build(fs: Path, old: dict[str, bytes] = OLD, new: dict[str, bytes] = NEW) -> None:
    """A board running 0.1.0 (factory image) with 0.2.0 staged as the agent leaves it."""
    fs.mkdir(parents=True)
    write(fs, "boot.py", (unixport.FIRMWARE / "boot.py").read_bytes())
    for files in (old, OTHERS):
        for p, b in files.items():
            write(fs, p, b)
    for p, b in new.items():
        write(fs, "ota/new/" + p, b)
    head = {
        "release": "unix-0.2.0",
        "manifest": manifest(new),
        "signature": "00" * 64,
        "signer_b64": "",
        "payload_size": 4096,
        "wrap": {},
    }
    write(fs, "ota/head.json", json.dumps(head).encode())
    set_state(fs, {"state": "staged", "release": "unix-0.2.0", "version": "0.2.0"})


def set_state(fs: Path, state: object) -> None:
    write(fs, "ota/state.json", json.dumps(state).encode())


def state(fs: Path) -> dict[str, object]:
    doc: dict[str, object] = json.loads((fs / "ota/state.json").read_text())
    return doc


def release_files(fs: Path) -> dict[str, bytes]:
    """Every file of the board outside ota/ and the files no version lists."""
    out = {}
    for f in fs.rglob("*"):
        rel = f.relative_to(fs).as_posix()
        if f.is_file() and not rel.startswith("ota/") and rel not in _NOT_RELEASE:
            out[rel] = f.read_bytes()
    return out


def folders(fs: Path) -> set[str]:
    """The folders of the board outside ota/ and data/."""
    return {
        d.relative_to(fs).as_posix()
        for d in fs.rglob("*")
        if d.is_dir() and d.relative_to(fs).parts[0] not in ("ota", "data")
    }


def parents(files: dict[str, bytes]) -> set[str]:
    return {Path(p).parents[i].as_posix() for p in files for i in range(len(Path(p).parts) - 1)}


def version(fs: Path, old: dict[str, bytes] = OLD, new: dict[str, bytes] = NEW) -> str | None:
    """ "old" or "new" when the tree is exactly that version (every file, nothing else, no
    folder left empty), else None; the files no version lists must be as flashed."""
    for name, other in OTHERS.items():
        assert (fs / name).read_bytes() == other, f"{name} was touched"
    assert (fs / "boot.py").exists()
    files = release_files(fs)
    for name, want in (("old", old), ("new", new)):
        if files == want and folders(fs) == parents(want):
            return name
    return None


def boot(
    fs: Path, env: dict[str, str] | None = None, code: str = "import boot"
) -> subprocess.CompletedProcess[str]:
    """Power-on as the rig does it: micropython in fs/, modules from fs/ only."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("QLINK_")}
    full["MICROPYPATH"] = str(fs)
    full.update(env or {})
    return subprocess.run(
        [unixport.micropython(), "-X", f"heapsize={HEAP}", "-c", code],
        cwd=fs,
        env=full,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The lines a boot printed; it must have ended normally with nothing on stderr."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Traceback" not in out and proc.stderr == "", out
    return proc.stdout.splitlines()


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def listed(lst: Path) -> dict[str, tuple[int, str]]:
    """A list file of boot.py: "<sha256 hex> <size> <path>" per line."""
    out = {}
    for line in lst.read_text().splitlines():
        h, n, p = line.split(" ")
        out[p] = (int(n), h)
    return out


def inodes(fs: Path, files: dict[str, bytes], under: str = "") -> dict[str, int]:
    """The inode number of each file of a set: a rename keeps it, a copy makes a new one."""
    return {p: (fs / under / p).stat().st_ino for p in files}


def file_ops(fs: Path, log: Path) -> list[str]:
    """The file operations (hook tags) of one uncut boot."""
    ok(boot(fs, {"QLINK_FILE_OPS": str(log)}))
    lines = log.read_text().splitlines()
    assert [int(line.split(" ", 1)[0]) for line in lines] == list(range(1, len(lines) + 1))
    return [line.split(" ", 1)[1] for line in lines]


@pytest.fixture
def fs(tmp_path: Path) -> Path:
    build(tmp_path / "fs")
    return tmp_path / "fs"


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A template: 0.1.0 running, 0.2.0 staged."""
    fs = tmp_path_factory.mktemp("staged") / "fs"
    build(fs)
    return fs


@pytest.fixture(scope="module")
def last_trial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A template: 0.2.0 in place after its second trial boot; the next boot rolls it back."""
    fs = tmp_path_factory.mktemp("trial") / "fs"
    build(fs)
    ok(boot(fs))
    ok(boot(fs))
    assert state(fs)["boots"] == 2
    return fs


def copy(template: Path, dst: Path) -> Path:
    shutil.copytree(template, dst)
    return dst


# -- the state machine, uncut ---------------------------------------------------------------


def test_swap_puts_every_file_of_the_manifest_in_place_and_counts_the_boot(fs: Path) -> None:
    assert version(fs) == "old"
    lines = ok(boot(fs))
    assert lines == ["boot: ota swap to 0.2.0", "boot: trial 1 of 2"]
    assert version(fs) == "new"  # agent/gone.py and agent/sub/ removed, lib/ created
    assert state(fs) == {
        "state": "trial",
        "release": "unix-0.2.0",
        "version": "0.2.0",
        "boots": 1,
    }
    # The old set is moved to ota/old/ and listed with its sizes and hashes (ota/old.lst,
    # docs/ota.md).
    assert listed(fs / "ota/old.lst") == {p: (len(b), sha(b)) for p, b in OLD.items()}
    assert listed(fs / "ota/new.lst") == {p: (len(b), sha(b)) for p, b in NEW.items()}
    for p, b in OLD.items():
        assert (fs / "ota/old" / p).read_bytes() == b


def test_the_backup_and_the_swap_move_files_by_rename_and_write_no_release_data(
    fs: Path, tmp_path: Path
) -> None:
    running, staged_files = inodes(fs, OLD), inodes(fs, NEW, "ota/new")
    ops = file_ops(fs, tmp_path / "ops.log")
    assert version(fs) == "new"
    # The only data boot.py writes are its lists and the state (swap; trial, boots 0 and 1).
    writes = [o.split(" ", 1)[1] for o in ops if o.startswith("write ")]
    assert writes == ["ota/new.lst", "ota/old.lst"] + ["ota/state.json"] * 3
    assert not [o for o in ops if o.startswith("remove ")]  # no file of either set deleted
    # The staged step, up to its state write: the two lists, then one rename per running file
    # into ota/old/, the folders that takes and those the moves leave empty, nothing else.
    backup = ops[: ops.index("write ota/state.json")]
    assert backup[:4] == [
        "write ota/new.lst",
        "rename ota/new.lst",
        "write ota/old.lst",  # before the first move: it names the old set
        "rename ota/old.lst",
    ]
    moves = [o for o in backup[4:] if not o.startswith(("mkdir ota/old", "rmdir "))]
    assert sorted(moves) == sorted("rename ota/old/" + p for p in OLD)
    assert sorted(o for o in backup if o.startswith("rmdir ")) == [
        "rmdir " + d for d in sorted(parents(OLD))
    ]
    # Rename, not copy: each file is the same file (inode) in its new place.
    assert inodes(fs, OLD, "ota/old") == running
    assert inodes(fs, NEW) == staged_files


def test_a_rollback_after_the_moves_restores_the_old_files_by_rename_with_their_hashes(
    fs: Path,
) -> None:
    running = inodes(fs, OLD)
    for _ in range(2):
        ok(boot(fs))
    assert version(fs) == "new"
    assert ok(boot(fs)) == ["boot: rolled back"]
    assert version(fs) == "old"
    old_list = listed(fs / "ota/old.lst")
    for p, b in OLD.items():
        data = (fs / p).read_bytes()
        assert old_list[p] == (len(data), sha(data)) == (len(b), sha(b))
    assert inodes(fs, OLD) == running  # the very files that ran before the update
    assert not [f for f in (fs / "ota/old").rglob("*") if f.is_file()]  # all moved back


def test_the_third_trial_boot_rolls_back_to_exactly_the_old_files(fs: Path) -> None:
    ok(boot(fs))
    assert ok(boot(fs)) == ["boot: trial 2 of 2"]
    assert version(fs) == "new"
    assert ok(boot(fs)) == ["boot: rolled back"]
    assert version(fs) == "old"  # qdid/new.py and lib/ gone, agent/gone.py back
    assert state(fs)["state"] == "rolled_back"
    assert state(fs)["reason"] == "trial_failed"
    assert ok(boot(fs)) == []  # the agent's to report and clear: boot.py does nothing more
    assert version(fs) == "old"


def test_a_committed_version_is_left_alone(fs: Path, tmp_path: Path) -> None:
    ok(boot(fs))
    set_state(fs, {"state": "committed", "release": "unix-0.2.0", "version": "0.2.0"})
    log = tmp_path / "ops.log"
    assert ok(boot(fs, {"QLINK_FILE_OPS": str(log)})) == []
    assert version(fs) == "new"
    assert not log.exists()  # not one file operation


def test_a_boot_without_an_update_does_nothing(tmp_path: Path) -> None:
    fs = tmp_path / "fs"
    fs.mkdir()
    write(fs, "boot.py", (unixport.FIRMWARE / "boot.py").read_bytes())
    for p, b in OLD.items():
        write(fs, p, b)
    for p, b in OTHERS.items():
        write(fs, p, b)
    assert ok(boot(fs)) == []
    assert version(fs) == "old"
    assert not (fs / "ota").exists()


def test_boot_unloads_the_hal_so_main_loads_the_one_put_in_place(fs: Path) -> None:
    code = (
        "import sys\nimport boot\n"
        "print(sorted(k for k in sys.modules if k != 'boot'))\n"
        "import board\nprint(board.RELEASE)\n"
        "print([k for k in dir(boot) if k[0] == '_' and k[1] != '_'])\n"
    )
    lines = ok(boot(fs, code=code))
    assert lines[-3:] == ["[]", "0.2.0", "[]"]


def test_the_old_set_of_an_updated_board_is_the_paths_of_its_current_manifest(fs: Path) -> None:
    # ota/current.json (the manifest of the running version) names what to move; a file it
    # does not list is no part of the version and is neither moved nor removed; a path it lists
    # that the board lacks is not in the old set.
    running = {p: b for p, b in OLD.items() if p != "agent/gone.py"}
    write(fs, "ota/current.json", manifest({**running, "agent/lost.py": b"L"}, "0.1.0").encode())
    lines = ok(boot(fs))
    assert lines[-1] == "boot: trial 1 of 2"
    assert listed(fs / "ota/old.lst") == {p: (len(b), sha(b)) for p, b in running.items()}
    assert (fs / "agent/gone.py").read_bytes() == OLD["agent/gone.py"]
    assert not (fs / "ota/old/agent/gone.py").exists()
    ok(boot(fs))
    assert ok(boot(fs)) == ["boot: rolled back"]
    assert release_files(fs) == OLD


@pytest.mark.parametrize(
    "current",
    [b"{garbage", manifest(OLD, "0.1.0").encode()[:-60], b'{"files":[{"path":"main.py"}]}'],
    ids=["not-json", "cut-short", "not-compact"],
)
def test_an_unreadable_current_manifest_makes_the_old_set_every_file_of_the_release_roots(
    fs: Path, current: bytes
) -> None:
    # The list is written while ota/current.json is scanned: a manifest that breaks off after
    # some entries leaves no line of them behind (the list is begun again from the roots).
    write(fs, "ota/current.json", current)
    assert ok(boot(fs))[-1] == "boot: trial 1 of 2"
    lines = (fs / "ota/old.lst").read_text().splitlines()
    assert len(lines) == len(OLD)
    assert listed(fs / "ota/old.lst") == {p: (len(b), sha(b)) for p, b in OLD.items()}
    ok(boot(fs))
    assert ok(boot(fs)) == ["boot: rolled back"]
    assert version(fs) == "old"


# -- bad input: boot.py never raises and leaves one complete version ---------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"",
        b"\x00\xff" * 40,
        b"[1, 2]",
        b'"staged"',
        b'{"state": "bogus"}',
        b'{"release": "unix-0.2.0"}',
        b'{"state": "trial", "boots": "two"}',
        b'{"state": "trial", "boots": -1}',
    ],
    ids=[
        "truncated",
        "empty",
        "binary",
        "list",
        "string",
        "unknown",
        "no-kind",
        "bad-boots",
        "negative-boots",
    ],
)
def test_an_unreadable_state_without_a_complete_old_set_touches_nothing(
    fs: Path, raw: bytes
) -> None:
    write(fs, "ota/state.json", raw)
    before = {f: f.read_bytes() for f in fs.rglob("*") if f.is_file()}
    assert ok(boot(fs)) == ["boot: ota state unreadable; no complete ota/old, nothing touched"]
    assert {f: f.read_bytes() for f in fs.rglob("*") if f.is_file()} == before


def test_an_unreadable_state_with_an_incomplete_old_set_touches_nothing(fs: Path) -> None:
    ok(boot(fs))
    # agent/gone.py is neither in ota/old/ nor in place: ota/old.lst lists a set not there.
    (fs / "ota/old/agent/gone.py").unlink()
    write(fs, "ota/state.json", b"{not json")
    before = {f: f.read_bytes() for f in fs.rglob("*") if f.is_file()}
    assert ok(boot(fs)) == ["boot: ota state unreadable; no complete ota/old, nothing touched"]
    assert {f: f.read_bytes() for f in fs.rglob("*") if f.is_file()} == before
    assert version(fs) == "new"


@pytest.mark.parametrize("raw", [b"{not json", b'{"state": "bogus"}', b"\xff" * 8])
def test_an_unreadable_state_with_a_complete_old_set_rolls_back(fs: Path, raw: bytes) -> None:
    ok(boot(fs))
    write(fs, "ota/state.json", raw)
    assert ok(boot(fs)) == ["boot: ota state unreadable; rolling back", "boot: rolled back"]
    assert version(fs) == "old"
    assert state(fs) == {"state": "rolled_back", "reason": "bad_state"}


def test_a_staged_file_missing_drops_the_update_before_anything_is_touched(fs: Path) -> None:
    (fs / "ota/new/qdid/new.py").unlink()
    lines = ok(boot(fs))
    assert lines == ["boot: ota update dropped: staged file qdid/new.py missing"]
    assert version(fs) == "old"
    assert state(fs)["state"] == "rolled_back"
    assert state(fs)["reason"] == "bad_file"
    assert not (fs / "ota/old").exists()


@pytest.mark.parametrize(
    "head",
    [
        b"{garbage",
        b'{"release": "unix-0.2.0"}',
        b'{"manifest": "{\\"files\\": 3}"}',
        b'{"manifest": "not json"}',
        b'{"manifest": 7}',
        json.dumps({"manifest": manifest(NEW)[:-40]}).encode(),
        json.dumps({"manifest": json.dumps(json.loads(manifest(NEW)))}).encode(),
    ],
    ids=[
        "not-json",
        "no-manifest",
        "files-not-a-list",
        "manifest-not-json",
        "manifest-not-a-string",
        "manifest-cut-short",
        "manifest-not-compact",
    ],
)
def test_an_unreadable_manifest_drops_the_update(fs: Path, head: bytes) -> None:
    write(fs, "ota/head.json", head)
    assert ok(boot(fs)) == ["boot: ota update dropped: no readable manifest"]
    assert version(fs) == "old"
    assert state(fs)["reason"] == "bad_file"


@pytest.mark.parametrize(
    "entry",
    [
        {"path": "../escape.py", "size": 1, "sha256": "00" * 32},
        {"path": "/abs.py", "size": 1, "sha256": "00" * 32},
        {"path": "agent//x.py", "size": 1, "sha256": "00" * 32},
        {"path": "agent/./x.py", "size": 1, "sha256": "00" * 32},
        {"path": "boot.py", "size": 1, "sha256": "00" * 32},
        {"path": "data/helper.bin", "size": 1, "sha256": "00" * 32},
        {"path": "ota/state.json", "size": 1, "sha256": "00" * 32},
        {"path": "config.json", "size": 1, "sha256": "00" * 32},
        {"path": "ca.der", "size": 1, "sha256": "00" * 32},
        {"path": "a" * 97, "size": 1, "sha256": "00" * 32},
        {"path": "agent/x.py", "size": -1, "sha256": "00" * 32},
        {"path": "agent/x.py", "size": "1", "sha256": "00" * 32},
        {"path": "agent/x.py", "size": 1, "sha256": "zz" * 32},
        {"path": "agent/x.py", "size": 1, "sha256": "00" * 31},
        {"path": 7, "size": 1, "sha256": "00" * 32},
    ],
    ids=lambda e: f"{e['path']!s:.20}-{e['size']}-{e['sha256'][:4]}",
)
def test_a_manifest_entry_outside_the_release_rules_drops_the_update(
    fs: Path, entry: dict[str, object]
) -> None:
    doc = json.loads(manifest(NEW))
    doc["files"].append(entry)
    m = json.dumps(doc, separators=(",", ":"))
    write(fs, "ota/head.json", json.dumps({"manifest": m}).encode())
    assert ok(boot(fs)) == ["boot: ota update dropped: no readable manifest"]
    assert version(fs) == "old"
    assert not (fs.parent / "escape.py").exists()


def test_a_staged_file_that_differs_from_its_hash_is_never_moved_and_rolls_back(
    fs: Path,
) -> None:
    # Same size, other bytes: the staged step's size check passes, the swap's hash check not.
    write(fs, "ota/new/main.py", NEW["main.py"].replace(b"0.2.0", b"6.6.6"))
    lines = ok(boot(fs))
    assert lines == [
        "boot: ota swap to 0.2.0",
        "boot: ota file main.py differs from its list",
        "boot: rolled back",
    ]
    assert version(fs) == "old"
    assert state(fs)["reason"] == "swap_failed"
    assert (fs / "ota/new/main.py").exists()  # never moved over the running main.py


@pytest.mark.parametrize(
    "blocker",
    ["ota/old", "ota/old/qdid/same.py/x"],
    ids=["first-move", "after-the-agent-files"],
)
def test_a_failure_while_moving_the_running_files_moves_them_back(
    fs: Path, tmp_path: Path, blocker: str
) -> None:
    # Something in the way of a move into ota/old/: a file where the folder goes (the first
    # move fails), or a folder where qdid/same.py goes (it fails once agent/ has moved). The
    # files already moved are moved back (a rollback at once): main.py never runs a part tree.
    write(fs, blocker, b"in the way")
    if blocker == "ota/old/qdid/same.py/x":
        (fs / blocker).unlink()
    running = inodes(fs, OLD)
    ops = file_ops(fs, tmp_path / "ops.log")
    lines = ok(boot(fs))  # the state is rolled_back: nothing more
    assert lines == []
    assert version(fs) == "old"
    assert inodes(fs, OLD) == running
    assert state(fs)["state"] == "rolled_back"
    assert state(fs)["reason"] == "stage_failed"
    moved = [o for o in ops if o.startswith("rename ota/old/")]
    assert (len(moved) > 5) == (blocker != "ota/old")


def test_a_failure_while_moving_prints_what_it_does(fs: Path) -> None:
    write(fs, "ota/old", b"a file where the folder goes")
    lines = ok(boot(fs))
    assert lines[0].startswith("boot: ota staged failed: OSError")
    assert lines[1:] == [
        "boot: ota update dropped: the running files could not be moved",
        "boot: rolled back",
    ]


def test_a_rollback_without_its_old_list_keeps_the_complete_new_version(fs: Path) -> None:
    ok(boot(fs))
    write(fs, "ota/old.lst", b"not a list\n")
    set_state(fs, {"state": "rollback", "release": "unix-0.2.0", "version": "0.2.0"})
    for _ in range(2):
        assert ok(boot(fs)) == ["boot: rollback incomplete; it runs again at the next boot"]
        assert version(fs) == "new"


def test_an_old_list_spoilt_after_the_moves_began_completes_the_new_version(
    fs: Path, tmp_path: Path
) -> None:
    # Without the list there is no way back: the way forward leaves one complete version.
    ops = file_ops(copy(fs, tmp_path / "count"), tmp_path / "ops.log")
    k = ops.index("rename ota/old/qdid/__init__.py") + 1
    env = {"QLINK_CUT_AT": str(k), "QLINK_CUT_FLAG": str(tmp_path / "flag")}
    assert boot(fs, env).returncode == -9  # a cut in the middle of the moves ...
    assert version(fs) is None
    write(fs, "ota/old.lst", b"not a list\n")  # ... and the list spoilt by a flash fault
    lines = ok(boot(fs))
    assert lines == [
        "boot: ota/old.lst unreadable; the update goes on without a way back",
        "boot: ota swap to 0.2.0",
        "boot: trial 1 of 2",
    ]
    assert version(fs) == "new"


def test_a_swap_without_the_old_list_removes_what_the_manifest_lacks(fs: Path) -> None:
    # A state "swap" whose ota/old.lst is gone (a flash fault): the swap still completes and
    # the release roots hold the new version only (the old paths found by walking them).
    set_state(fs, {"state": "swap", "release": "unix-0.2.0", "version": "0.2.0"})
    assert ok(boot(fs)) == ["boot: ota swap to 0.2.0", "boot: trial 1 of 2"]
    assert version(fs) == "new"


# -- power cuts ----------------------------------------------------------------------------


def _cut_then_boot(template: Path, work: Path, k: int, op: str) -> list[str]:
    copy(template, work)
    flag = work.parent / (work.name + ".flag")
    env = {"QLINK_CUT_AT": str(k), "QLINK_CUT_FLAG": str(flag)}
    cut = boot(work, env)
    assert cut.returncode == -9, f"no cut before op {k} ({op}): {cut.stdout}{cut.stderr}"
    assert flag.exists()
    return ok(boot(work, env))  # the flag is there: this boot runs through


def test_a_power_cut_before_any_file_operation_of_the_swap_ends_in_the_new_version(
    staged: Path, tmp_path: Path
) -> None:
    ops = file_ops(copy(staged, tmp_path / "count"), tmp_path / "ops.log")
    # Every kind of operation of the staged step (the lists, a move of each running file into
    # ota/old/), the swap (a move of each staged file, the folders the old set leaves empty)
    # and the trial count is cut at. No file is removed: the old ones are moved away.
    assert {o.split(" ")[0] for o in ops} == {"write", "rename", "mkdir", "rmdir"}
    assert len([o for o in ops if o.startswith("rename ")]) == len(OLD) + len(NEW) + 5
    old_list = {p: (len(b), sha(b)) for p, b in OLD.items()}
    for k, op in enumerate(ops, 1):
        work = tmp_path / f"cut{k}"
        lines = _cut_then_boot(staged, work, k, op)
        assert version(work) == "new", f"cut before op {k} ({op}): {lines}"
        # A resumed backup kept the list it wrote before the first move (not one of the part
        # tree it found): the old set is whole for the rollback below.
        assert listed(work / "ota/old.lst") == old_list, f"cut before op {k} ({op})"
        st = state(work)
        assert st["state"] == "trial"
        assert lines[-1] == f"boot: trial {st['boots']} of 2"
        if k % 2:
            # The trial goes on without a commit: at most two more boots roll it back.
            for _ in range(3):
                ok(boot(work))
                if state(work)["state"] == "rolled_back":
                    break
                assert version(work) == "new"
            assert state(work)["state"] == "rolled_back", f"cut before op {k} ({op})"
            assert version(work) == "old"
        else:
            # The agent commits: boot.py leaves the new version as it is.
            set_state(work, {"state": "committed", "release": "unix-0.2.0"})
            assert ok(boot(work)) == []
            assert version(work) == "new"
        shutil.rmtree(work)


def test_a_power_cut_before_any_file_operation_of_the_rollback_ends_in_the_old_version(
    last_trial: Path, tmp_path: Path
) -> None:
    ops = file_ops(copy(last_trial, tmp_path / "count"), tmp_path / "ops.log")
    assert {o.split(" ")[0] for o in ops} == {"write", "rename", "mkdir", "remove", "rmdir"}
    assert version(tmp_path / "count") == "old"
    for k, op in enumerate(ops, 1):
        work = tmp_path / f"cut{k}"
        lines = _cut_then_boot(last_trial, work, k, op)
        assert lines[-1] == "boot: rolled back", f"cut before op {k} ({op}): {lines}"
        assert version(work) == "old", f"cut before op {k} ({op})"
        assert state(work)["state"] == "rolled_back"
        assert ok(boot(work)) == []
        assert version(work) == "old"
        shutil.rmtree(work)


@pytest.mark.parametrize(
    "then",
    ["unreadable-state", "staged-file-missing"],
)
def test_a_power_cut_during_the_backup_then_a_fault_ends_in_the_old_version(
    staged: Path, tmp_path: Path, then: str
) -> None:
    # From the moment ota/old.lst is written, each file of the old set is in ota/old/ or still
    # in place: a state spoilt by the cut, or a staged file gone, after any part of the moves
    # rolls back to exactly the old files (before the list, nothing was touched).
    ops = file_ops(copy(staged, tmp_path / "count"), tmp_path / "ops.log")
    backup = ops.index("write ota/state.json")  # the staged step's own operations
    listed_at = ops.index("rename ota/old.lst") + 1  # a cut before it: no list yet
    for k in range(1, backup + 2):
        work = copy(staged, tmp_path / f"cut{k}")
        running = inodes(work, OLD)
        flag = {"QLINK_CUT_AT": str(k), "QLINK_CUT_FLAG": str(tmp_path / f"flag{k}")}
        assert boot(work, flag).returncode == -9
        if then == "unreadable-state":
            write(work, "ota/state.json", b"{not json")
        else:
            (work / "ota/new/qdid/new.py").unlink()
        lines = ok(boot(work))
        where = f"cut before op {k} ({ops[k - 1]}): {lines}"
        assert version(work) == "old", where
        assert inodes(work, OLD) == running, where
        if k <= listed_at:  # no list yet: nothing was touched
            assert lines == [
                "boot: ota state unreadable; no complete ota/old, nothing touched"
                if then == "unreadable-state"
                else "boot: ota update dropped: staged file qdid/new.py missing"
            ], where
        else:
            assert lines[-1] == "boot: rolled back", where
        if then == "unreadable-state" and k <= listed_at:
            continue  # the state stays unreadable: the agent's to clear
        assert state(work)["state"] == "rolled_back"
        assert state(work)["reason"] == ("bad_state" if then == "unreadable-state" else "bad_file")
        assert ok(boot(work)) == []
        assert version(work) == "old"
        shutil.rmtree(work)


def _pairs(n: int, count: int, seed: int) -> Iterator[tuple[int, int]]:
    rng = random.Random(seed)
    for _ in range(count):
        yield rng.randint(1, n), rng.randint(1, 30)


def test_a_second_power_cut_during_the_recovery_boot_still_ends_in_one_version(
    staged: Path, tmp_path: Path
) -> None:
    n = len(file_ops(copy(staged, tmp_path / "count"), tmp_path / "ops.log"))
    for i, (first, second) in enumerate(_pairs(n, 12, seed=7)):
        work = copy(staged, tmp_path / f"w{i}")
        for k, flag in ((first, "f1"), (second, "f2")):
            cut = boot(work, {"QLINK_CUT_AT": str(k), "QLINK_CUT_FLAG": str(tmp_path / flag)})
            assert cut.returncode in (-9, 0), cut.stdout + cut.stderr
        ok(boot(work))
        assert version(work) == "new", (first, second)
        (tmp_path / "f1").unlink()
        (tmp_path / "f2").unlink(missing_ok=True)
        shutil.rmtree(work)


# -- the unix board's cut hook and the rig's environment --------------------------------------

_HOOK = (
    "import board\n"
    "board.file_op('write a')\nprint('one')\n"
    "import sys\ndel sys.modules['board']\nimport board\n"  # boot.py drops it; the count goes on
    "board.file_op('rename a')\nprint('two')\n"
    "board.file_op('remove a')\nprint('three')\n"
)


def test_the_cut_hook_kills_the_process_at_the_nth_operation_once(tmp_path: Path) -> None:
    fs = tmp_path / "fs"
    fs.mkdir()
    write(fs, "board.py", BOARD_PY)
    write(fs, "silicon.py", SILICON_PY)
    flag, log = tmp_path / "flag", tmp_path / "ops.log"
    env = {"QLINK_CUT_AT": "2", "QLINK_CUT_FLAG": str(flag), "QLINK_FILE_OPS": str(log)}
    cut = boot(fs, env, code=_HOOK)
    assert cut.returncode == -9
    assert cut.stdout.splitlines() == ["one"]
    assert flag.exists()
    assert log.read_text() == "1 write a\n2 rename a\n"
    log.unlink()
    assert ok(boot(fs, env, code=_HOOK)) == ["one", "two", "three"]  # the flag: no second cut
    assert log.read_text() == "1 write a\n2 rename a\n3 remove a\n"


def test_the_cut_hook_without_its_environment_does_nothing(tmp_path: Path) -> None:
    fs = tmp_path / "fs"
    fs.mkdir()
    write(fs, "board.py", BOARD_PY)
    write(fs, "silicon.py", SILICON_PY)
    assert ok(boot(fs, code=_HOOK)) == ["one", "two", "three"]
    assert list(tmp_path.iterdir()) == [fs]


def test_the_emulated_board_passes_its_extra_environment_to_the_board(tmp_path: Path) -> None:
    board = emulated.EmulatedBoard(tmp_path)
    board.fs.mkdir(parents=True)
    board.env["QLINK_CUT_AT"] = "7"
    out = board.run_script("import os\nprint(os.getenv('QLINK_CUT_AT'))\n")
    assert out.splitlines()[-1] == "7"


def test_a_release_of_64_files_swaps_and_rolls_back_within_the_heap(tmp_path: Path) -> None:
    # The largest release (docs/ota.md: 64 files) over a running set as large, with the
    # longest paths a release may hold (parts of 48 characters, 96 in all).
    old = {f"agent/{'o' * 40}/m{i:02d}_{'o' * 40}"[:96]: bytes([i]) * (100 + i) for i in range(62)}
    new = {f"qdid/{'n' * 44}/n{i:02d}_{'n' * 40}"[:96]: bytes([i]) * (700 + i) for i in range(62)}
    for files in (old, new):
        files["main.py"] = b"# main\n"
        files["board.py"] = BOARD_PY
    fs = tmp_path / "fs"
    build(fs, old, new)
    assert ok(boot(fs))[-1] == "boot: trial 1 of 2"
    assert version(fs, old, new) == "new"
    ok(boot(fs))
    assert ok(boot(fs)) == ["boot: rolled back"]
    assert version(fs, old, new) == "old"


def test_an_emulated_board_cut_during_the_swap_comes_back_in_the_new_version(
    tmp_path: Path,
) -> None:
    # The rig's path: EmulatedBoard.env reaches the board's power-on, the hook's SIGKILL ends
    # the process, the relay starts it again, boot.py finishes the swap and main.py runs.
    board = emulated.EmulatedBoard(tmp_path)
    build(board.fs)
    ops = file_ops(copy(board.fs, tmp_path / "count"), tmp_path / "ops.log")
    k = ops.index("rename main.py") + 1  # in the middle of the swap
    board.env.update({"QLINK_CUT_AT": str(k), "QLINK_CUT_FLAG": str(tmp_path / "flag")})
    try:
        board.power_on()
        board.wait_for(r"^main 0\.2\.0$", timeout=30)
        assert (tmp_path / "flag").exists()
        assert any("soft reboot" in line for line in board.lines())  # the relay's restart
        assert [ln for ln in board.lines() if ln.startswith("boot:")] == [
            "boot: ota swap to 0.2.0",  # cut during the swap, then the whole swap again
            "boot: ota swap to 0.2.0",
            "boot: trial 1 of 2",
        ]
    finally:
        board.close()
    assert version(board.fs) == "new"
