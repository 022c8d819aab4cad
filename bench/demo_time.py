"""`make demo`'s duration: `python -m hil.demo` run as `make demo` runs it, timed from the
command's start to its exit (every process it started stopped).

The demo's working folder is a temporary directory (`--work`), removed afterwards, so a run
neither reads nor leaves the repository's `demo-data/`. `make demo`'s set-up step (`make
setup`, a no-op once `.venv` exists) is not part of the figure.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_DONE = re.compile(r"done in (\d+(?:\.\d+)?)s")
_TIMEOUT_S = 600  # the demo's own waits add up to less than 300 s


def run() -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="qlink-demo-time-") as tmp:
        cmd = [sys.executable, "-m", "hil.demo", "--work", str(Path(tmp) / "demo-data")]
        t0 = time.perf_counter()
        proc = subprocess.run(
            cmd,
            cwd=REPO,
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_S,
            check=False,
        )
        wall = time.perf_counter() - t0
    done = _DONE.search(proc.stdout)
    if proc.returncode != 0 or done is None:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        raise RuntimeError(f"the demo failed (exit {proc.returncode}):\n{tail}")
    return {
        "figures": {"demo": {"wall_s": round(wall, 1), "steps_s": float(done.group(1))}},
        "notes": [
            "wall_s: `python -m hil.demo` (as `make demo` runs it, default options: 3 telemetry "
            "messages) from start to exit, in a temporary working folder",
            "steps_s: the demo's own clock at its last step, before the board and server stop",
        ],
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
