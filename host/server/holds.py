"""Hold points: where a crash test wants its `kill -9` to land.

A test starts the server with QLINK_HOLD=<point> (and QLINK_HOLD_FILE=<path>); when the server
reaches that point it writes the file (its pid and the point) and waits there until it is
killed, so the kill lands exactly there rather than wherever a timer falls. Without
QLINK_HOLD, `hold` is one comparison of two strings.

Points: "onboard_transaction" (the proof's write transaction has made its changes and not yet
committed them), "aws_registration" (the AWS IoT driver has registered the device's certificate
and attached nothing to it yet).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_POINT = os.environ.get("QLINK_HOLD", "")


def hold(point: str) -> None:
    if _POINT == point:
        _wait_here(point)


def _wait_here(point: str) -> None:
    marker = os.environ.get("QLINK_HOLD_FILE")
    if marker:
        Path(marker).write_text(f"{os.getpid()} {point}\n")
    while True:
        time.sleep(3600)
