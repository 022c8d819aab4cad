"""Every rig action as a timed step with its arguments (STYLE.md, "The rig").

Targets and strategies report through `step(...)`; the pytest plugin gives each test a fresh
`StepLog` and prints it with the test's report, and `qlink rig` writes it to its report.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

_log = logging.getLogger("qlink.rig")


@dataclass
class Step:
    name: str
    args: dict[str, Any]
    start_s: float
    duration_s: float = 0.0
    ok: bool = True
    error: str = ""

    def line(self) -> str:
        args = " ".join(f"{k}={v}" for k, v in self.args.items())
        status = "ok" if self.ok else f"FAILED {self.error}"
        return f"[{self.start_s:8.2f}s +{self.duration_s:6.2f}s] {self.name} {args} -> {status}"


@dataclass
class StepLog:
    t0: float = field(default_factory=time.monotonic)
    steps: list[Step] = field(default_factory=list)

    @contextlib.contextmanager
    def step(self, name: str, **args: Any) -> Iterator[Step]:
        s = Step(name, {k: _short(v) for k, v in args.items()}, time.monotonic() - self.t0)
        self.steps.append(s)
        t = time.monotonic()
        try:
            yield s
        except BaseException as e:
            s.ok = False
            s.error = type(e).__name__
            raise
        finally:
            s.duration_s = time.monotonic() - t
            _log.info("step %s", json.dumps(asdict(s), default=str))

    def text(self) -> str:
        return "\n".join(s.line() for s in self.steps)


def _short(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray)):
        return f"<{len(v)} bytes>"
    s = v if isinstance(v, (int, float, bool)) else str(v)
    if isinstance(s, str) and len(s) > 120:
        return s[:117] + "..."
    return s


_current = StepLog()


def current() -> StepLog:
    return _current


def use(log: StepLog) -> StepLog:
    """Make `log` the one rig actions report to (the plugin does this per test)."""
    global _current
    _current = log
    return log


def step(name: str, **args: Any) -> contextlib.AbstractContextManager[Step]:
    return _current.step(name, **args)
