"""The data directory: one running server at a time, and whether a directory holds qlink data.

A server holds an exclusive `flock(2)` on `data_dir/server.lock` for its whole life, taken
before it touches anything else there (`server.json`, the CA, the registry, the broker's
files), so a second server on the same directory stops with a sentence instead of deleting
the first one's `server.json` and its broker. The kernel drops the lock when the holder's last
descriptor closes, which includes any death of the process (kill -9): a lock is never stale.
The file itself stays: removing it would let two servers lock two different files of one name.
It holds the holder's pid, for the message only; the lock, not the pid, decides.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from host.server import ServerError
from host.server.settings import Settings

LOCK_NAME = "server.lock"
_PID_WAIT_S = 1.0  # a holder writes its pid right after it locks; wait that long to read it


class DataDirError(ServerError):
    """The data directory cannot be used as asked."""


class DataDirBusy(DataDirError):
    def __init__(self, data_dir: Path, pid: int | None) -> None:
        super().__init__(data_dir, pid)
        self.data_dir = data_dir
        self.pid = pid

    def __str__(self) -> str:
        holder = f"pid {self.pid}" if self.pid is not None else "its pid unknown"
        return (
            f"the data directory {self.data_dir} is in use by a running qlink server "
            f"({holder}); stop it first or use another --data-dir"
        )


class NoQlinkData(DataDirError):
    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.data_dir = data_dir

    def __str__(self) -> str:
        return (
            f"there is no qlink data in {self.data_dir}; give --data-dir of a server's data "
            f"directory, or start one with: qlink server --data-dir {self.data_dir}"
        )


def data_dir_has_qlink_data(data_dir: Path, database_url: str | None = None) -> bool:
    """Whether `data_dir` holds a server's data: its registry database or its CA, or the
    registry lives in a database server (`database_url`; None: QLINK_DATABASE_URL)."""
    settings = Settings(data_dir=data_dir)
    url = settings.database_url if database_url is None else database_url
    return bool(url) or settings.db_path.is_file() or settings.ca_dir.is_dir()


class DataDirLock:
    """The exclusive lock of one data directory, held until `release()` or the process ends."""

    def __init__(self, data_dir: Path, fd: int) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # no pid of a server that has stopped
        os.close(fd)  # closing the last descriptor drops the lock

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.release()


def _holder(fd: int) -> int | None:
    deadline = time.monotonic() + _PID_WAIT_S
    while True:
        raw = os.pread(fd, 32, 0).strip()
        if raw.isdigit():
            return int(raw)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


def lock_data_dir(data_dir: Path) -> DataDirLock:
    """Create `data_dir` if needed and lock it for this process, or raise DataDirBusy naming
    the running server that holds it."""
    data_dir = Path(data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        # Not inherited (O_CLOEXEC): the broker and API workers must not keep the lock alive.
        fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise DataDirError(
            f"cannot use {data_dir} as the data directory ({e.strerror}); "
            "give --data-dir a directory this user may write"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _holder(fd)
        os.close(fd)
        raise DataDirBusy(data_dir, pid) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return DataDirLock(data_dir, fd)
