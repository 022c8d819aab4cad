"""Files: atomic writes (a reader, or a crash, never sees a half-written file), and paths built
from names that stay inside their directory."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` via a temporary file in the same directory, fsync, rename.

    The temporary file is created with `mode` from the start, so a key never exists on disk
    with wider permissions, not even for a moment.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # The rename is durable only once the directory entry is on disk.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class PathOutside(ValueError):
    """A path built from names would not be a file or directory inside its directory."""


def path_in(directory: Path, *parts: str) -> Path:
    """`directory/parts...` resolved, when each part is one plain path component (not empty,
    `.` or `..`, without a separator or NUL) and the resolved path, symbolic links followed,
    lies inside the resolved `directory`; PathOutside otherwise. Every path the server builds
    from a name (a tenant, a device ID) goes through here."""
    for part in parts:
        if (
            part in ("", ".", "..")
            or os.sep in part
            or (os.altsep is not None and os.altsep in part)
            or "\0" in part
        ):
            raise PathOutside(f"{part!r} is not a plain file or directory name")
    base = directory.resolve()
    path = base.joinpath(*parts).resolve()
    if path == base or not path.is_relative_to(base):
        raise PathOutside(f"{'/'.join(parts)!r} leads outside its directory")
    return path
