"""A firmware release's manifest and the rules it keeps (docs/ota.md "Release"): versions,
board names, the paths a release may hold, the limits, and the one compact form of the JSON a
release key signs. Every refusal is a ReleaseError whose message names the rule.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from host.server import ServerError

MAX_FILES = 64
MAX_TOTAL = 1024 * 1024  # bytes, every file together
MAX_PATH = 96
DEFAULT_MIN_VERSION = "0.0.0"
_PART = re.compile(r"[A-Za-z0-9_.-]{1,48}\Z")
_VERSION = re.compile(r"(0|[1-9][0-9]{0,4})\.(0|[1-9][0-9]{0,4})\.(0|[1-9][0-9]{0,4})\Z")
_BOARD = re.compile(r"[a-z0-9][a-z0-9_]{0,31}\Z")
_NEVER = ("boot.py", "config.json", "enrol.py")
_NOT_UNDER = ("data", "ota")
_MAX_MANIFEST = 16 * 1024  # bytes; 64 entries of ~150 bytes


class ReleaseError(ServerError):
    """A release that cannot be built, published or served as asked: `code` names the rule
    for the APIs (docs/ota.md), str() says what to do."""

    status = 400
    code = "bad_release"


# -- rules -------------------------------------------------------------------------------------
def parse_version(s: str) -> tuple[int, int, int]:
    """`MAJOR.MINOR.PATCH`, decimal without leading zeros, each 0..65535."""
    m = _VERSION.match(s) if isinstance(s, str) else None
    if m is None or any(int(g) > 65535 for g in m.groups()):
        raise ReleaseError(
            f"version {str(s)[:24]!r} must be MAJOR.MINOR.PATCH, each a decimal 0 to 65535 "
            "without leading zeros (e.g. 0.2.0)"
        )
    return int(m[1]), int(m[2]), int(m[3])


def check_board(board: str) -> str:
    if not isinstance(board, str) or not _BOARD.match(board):
        raise ReleaseError(
            f"board {str(board)[:40]!r} must be 1 to 32 lowercase letters, digits or '_' "
            "(a folder of boards/, e.g. unix)"
        )
    return board


def release_id(board: str, version: str) -> str:
    """`<board>-<version>`: one release per board and version."""
    parse_version(version)
    return f"{check_board(board)}-{version}"


def check_path(path: str) -> str | None:
    """Why `path` may not be in a release (a sentence), or None when it may."""
    if not isinstance(path, str) or not path:
        return "a path must be a non-empty string"
    if len(path) > MAX_PATH:
        return f"path {path[:40]!r}... is longer than {MAX_PATH} characters"
    if path.startswith("/"):
        return f"path {path!r} must be relative (no leading '/')"
    parts = path.split("/")
    for part in parts:
        if part in (".", "..") or not _PART.match(part):
            return (
                f"path {path!r}: each part must be 1 to 48 of A-Z a-z 0-9 _ . - and not '.' or '..'"
            )
    if path == "boot.py":
        return "boot.py is the device's fixed loader and is never updated over the air"
    if path in _NEVER:
        return f"{path} is the device's own and is never updated over the air"
    if parts[0] in _NOT_UNDER:
        return f"path {path!r}: nothing under {parts[0]}/ (the device's own state) may be updated"
    if path.endswith(".der"):
        return f"path {path!r}: a .der file would replace the pinned root certificate"
    return None


def _check_paths(paths: Iterable[str]) -> None:
    bad = [why for p in paths if (why := check_path(p)) is not None]
    if bad:
        more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ReleaseError("; ".join(bad[:5]) + more)


# -- the manifest ------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    version: str
    min_version: str
    board: str
    files: tuple[FileEntry, ...]

    @property
    def release_id(self) -> str:
        return f"{self.board}-{self.version}"

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def _encode(version: str, min_version: str, board: str, entries: list[FileEntry]) -> bytes:
    doc = {
        "v": 1,
        "version": version,
        "min_version": min_version,
        "board": board,
        "files": [{"path": e.path, "size": e.size, "sha256": e.sha256} for e in entries],
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode()


def _check_release(version: str, min_version: str, board: str, entries: list[FileEntry]) -> None:
    if parse_version(min_version) > parse_version(version):
        raise ReleaseError(
            f"min_version {min_version} is above the release's version {version}: no device "
            "could take it"
        )
    check_board(board)
    if not entries:
        raise ReleaseError("a release must hold at least one file")
    if len(entries) > MAX_FILES:
        raise ReleaseError(f"a release holds at most {MAX_FILES} files, not {len(entries)}")
    _check_paths(e.path for e in entries)
    total = sum(e.size for e in entries)
    if total > MAX_TOTAL:
        raise ReleaseError(f"a release holds at most {MAX_TOTAL} bytes in all, not {total}")


def manifest_bytes(
    version: str, min_version: str, board: str, files: Mapping[str, bytes | Path]
) -> bytes:
    """The manifest of `files` (device path -> content or local file): compact JSON, keys in
    the documented order, files sorted by path. Every rule is checked."""
    entries = []
    for path in sorted(files):
        item = files[path]
        data = item.read_bytes() if isinstance(item, Path) else bytes(item)
        entries.append(FileEntry(path, len(data), hashlib.sha256(data).hexdigest()))
    _check_release(version, min_version, board, entries)
    return _encode(version, min_version, board, entries)


def parse_manifest(data: bytes) -> Manifest:
    """The manifest's content; ReleaseError unless it is exactly in the form manifest_bytes
    writes (so the bytes a device hashes are the ones checked here)."""
    if len(data) > _MAX_MANIFEST:
        raise ReleaseError(f"the manifest is longer than {_MAX_MANIFEST} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ReleaseError("the manifest is not JSON") from None
    shape = (
        "the manifest must be {v: 1, version, min_version, board, files: [{path, size, sha256}]}"
    )
    if not isinstance(doc, dict) or list(doc) != ["v", "version", "min_version", "board", "files"]:
        raise ReleaseError(shape)
    if doc["v"] != 1 or not isinstance(doc["files"], list):
        raise ReleaseError(shape)
    entries = []
    for f in doc["files"]:
        if not (
            isinstance(f, dict)
            and list(f) == ["path", "size", "sha256"]
            and isinstance(f["path"], str)
            and type(f["size"]) is int
            and f["size"] >= 0
            and isinstance(f["sha256"], str)
            and re.fullmatch("[0-9a-f]{64}", f["sha256"])
        ):
            raise ReleaseError(shape)
        entries.append(FileEntry(f["path"], f["size"], f["sha256"]))
    for key in ("version", "min_version", "board"):
        if not isinstance(doc[key], str):
            raise ReleaseError(shape)
    _check_release(doc["version"], doc["min_version"], doc["board"], entries)
    paths = [e.path for e in entries]
    if paths != sorted(set(paths)):
        raise ReleaseError("the manifest's files must be sorted by path, each path once")
    if _encode(doc["version"], doc["min_version"], doc["board"], entries) != data:
        raise ReleaseError("the manifest is not in its compact form (no spaces, keys in order)")
    return Manifest(doc["version"], doc["min_version"], doc["board"], tuple(entries))
