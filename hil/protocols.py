"""What a test may ask of a board, independent of what the board is (STYLE.md, "The rig").

A target (hil.targets: a USB board on a serial port, or an emulated board behind a pty)
implements some of these; a test asks for the protocol it needs, so the same test runs on both.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class Console(Protocol):
    """The board's console: the lines it printed, and waiting for one."""

    def lines(self) -> list[str]: ...

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]: ...


@runtime_checkable
class FileTransfer(Protocol):
    """The board's filesystem, through the REPL (mpremote)."""

    def put(self, local: Path, remote: str) -> None: ...

    def get(self, remote: str) -> bytes: ...

    def ls(self, remote: str = "") -> list[str]: ...

    def sha256(self, remotes: list[str]) -> dict[str, str]: ...

    def exec(self, code: str, timeout: float = 30.0) -> str: ...


@runtime_checkable
class Reset(Protocol):
    def soft_reset(self) -> None: ...

    def hard_reset(self) -> None: ...


@runtime_checkable
class Power(Protocol):
    """Power switch: off is a power cut at whatever instant."""

    def power_on(self) -> None: ...

    def power_off(self) -> None: ...

    def power_cycle(self) -> None: ...


@runtime_checkable
class Flash(Protocol):
    """Deploy the application: compiled firmware, board HAL, config and pinned root CA."""

    def deploy(self, config: dict[str, object], root_ca_der: bytes) -> dict[str, str]: ...
