"""(c) A 60 s network cut through hil.faultproxy: the backoff grows to its cap and no further,
the outage queue (32 samples) overflows and drops the oldest, and what it kept arrives in order
after the reconnection. Two minutes of a board mostly waiting out the cut: `make hil` runs it
(QLINK_LONG=1), `make test` does not (soak-like runs stay out of it, as test_rig_soak.py)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from hil import scenarios
from hil.scenarios import ProxiedBoard
from hil.serverproc import ServerProcess

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.getenv("QLINK_LONG") != "1", reason="make hil runs this (2 min)"),
]

QUEUE_LEN = 32  # firmware/agent/main.py QUEUE_LEN
HEAP_TOLERANCE = 2048  # see test_rig_network.py


@pytest.fixture(scope="module")
def net(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxiedBoard]:
    server.cli("batch", "create", "net-long")
    pb = scenarios.board_behind_proxy(
        tmp_path_factory.mktemp("net-long"), server, "net-long", "net-long"
    )
    yield pb
    pb.close()


def test_c_sixty_second_cut_caps_backoff_and_drops_only_the_oldest_samples(
    net: ProxiedBoard,
) -> None:
    board, tap = net.board, net.tap
    tap.wait_seq(6, timeout=60)
    mem = [m.data["mem_free"] for m in tap.telemetry() if 2 <= m.data["seq"] <= 6]
    before = sorted(mem)[len(mem) // 2]
    start = len(board.lines())
    last_before = max(tap.seqs())
    net.proxy.cut(60.0)
    t_cut = time.monotonic()
    # Waits add up to 31.5..63 s over six tries; a seventh may wait up to the 60 s cap.
    scenarios.wait_count(board, r"I agent: reconnected after \d+ failures", 1, timeout=150)
    back_s = time.monotonic() - t_cut
    waits = scenarios.retry_waits(board.lines()[start:])
    assert [n for n, _ in waits] == list(range(1, len(waits) + 1))
    for n, w in waits:
        lo, hi = scenarios.backoff_bounds_ms(n)
        assert lo <= w < hi <= scenarios.BACKOFF_MAX_MS, (n, w)
    assert sum(w for _, w in waits[:-1]) < 60000 <= sum(w for _, w in waits) + 2000, waits
    assert 60 <= back_s < 60 + waits[-1][1] / 1000 + 10, (back_s, waits)
    ev = tap.wait_event(1, timeout=30, kind="reconnected").data
    assert ev["failures"] == len(waits)
    assert ev["queued"] == QUEUE_LEN  # full: 60 s of samples at 300 ms is ~200
    assert ev["dropped"] > 0
    tap.wait_seq(last_before + ev["dropped"] + QUEUE_LEN + 5, timeout=60)
    seqs = tap.seqs()
    uniq = list(dict.fromkeys(seqs))
    assert uniq == sorted(uniq), f"out of order: {seqs}"
    missing = sorted(set(range(uniq[0], uniq[-1] + 1)) - set(uniq))
    # Oldest dropped first: one gap, right after what the broker had when the link went, of
    # exactly the dropped samples, less at most one: the sample in flight at the cut may have
    # reached the broker before its PUBACK was lost, and then left the full queue first.
    assert ev["dropped"] - 1 <= len(missing) <= ev["dropped"], (missing[:5], ev)
    assert missing == list(range(missing[0], missing[0] + len(missing)))
    assert missing[0] in (last_before + 1, last_before + 2), (last_before, missing[:3])
    after_seq = max(tap.seqs())
    tap.wait_seq(after_seq + 5, timeout=30)
    mem = [
        m.data["mem_free"] for m in tap.telemetry() if after_seq < m.data["seq"] <= after_seq + 5
    ]
    after = sorted(mem)[len(mem) // 2]
    assert abs(after - before) <= HEAP_TOLERANCE, (before, after)
    print(
        f"60 s cut: waits {waits} ms, back after {back_s:.1f} s, event {ev}, "
        f"mem_free {before} -> {after}"
    )
