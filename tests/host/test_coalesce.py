"""host/server/coalesce.py: at most one run per interval, and no request lost."""

from __future__ import annotations

import threading
import time

from host.server.coalesce import Coalesced


def test_requests_inside_the_interval_become_one_run_at_its_end() -> None:
    ran: list[float] = []
    done = threading.Event()

    def fn() -> None:
        ran.append(time.monotonic())
        if len(ran) == 2:
            done.set()

    c = Coalesced(fn, 0.2, "t")
    t0 = time.monotonic()
    for _ in range(50):
        c()
    assert len(ran) == 1  # the first runs at once
    assert done.wait(2)
    time.sleep(0.3)  # nothing more may come: the 49 others were one run
    assert len(ran) == 2 and ran[1] - t0 >= 0.2


def test_flush_runs_what_is_scheduled_and_a_failure_does_not_stop_it() -> None:
    calls: list[int] = []

    def fn() -> None:
        calls.append(1)
        raise RuntimeError("broker gone")

    c = Coalesced(fn, 60, "t")
    c()
    c()  # scheduled a minute out
    c.flush()
    assert len(calls) == 2
    c.flush()
    assert len(calls) == 2  # nothing left to run
