"""(c) Network faults between an emulated board and the broker, through hil.faultproxy: a 5 s cut
and flapping. The board retries with bounded, jittered backoff, reconnects, reports its retry
state on its event topic, delivers the telemetry it buffered in order, and its live heap is the
same afterwards. (The 60 s cut, where the outage queue overflows, is test_rig_network_long.py.)"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Iterator

import pytest

from hil import scenarios
from hil.scenarios import ProxiedBoard
from hil.serverproc import ServerProcess

pytestmark = pytest.mark.e2e

RECONNECTED = r"I agent: reconnected after \d+ failures"
# Live heap after a collection (telemetry's mem_free) may differ between two quiet moments by
# what the agent legitimately holds: the last error string (<= 80 chars), the event message's
# leftovers and fragmentation of the 192 KiB heap around mbedTLS's buffers after a new TLS
# session. 2 KiB is ~1% of the heap, and far below what one leaked TLS session (~40 KiB) or the
# 32 queued samples that must be freed again (~4 KiB) would show.
HEAP_TOLERANCE = 2048
# A 5 s cut can keep the link down for up to 13 s: three tries that end just before the cut
# does (< 5 s) and a fourth wait of up to 8 s. At 500 ms that is <= 27 samples, so the outage
# queue (32) does not overflow here; the 60 s cut (test_rig_network_long.py) makes it.
INTERVAL_MS = 500


@pytest.fixture(scope="module")
def net(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxiedBoard]:
    server.cli("batch", "create", "net")
    pb = scenarios.board_behind_proxy(
        tmp_path_factory.mktemp("net"), server, "net", "net", interval_ms=INTERVAL_MS
    )
    yield pb
    pb.close()


def _steady_mem(pb: ProxiedBoard, after_seq: int, n: int = 5) -> int:
    """Median mem_free of n telemetry samples taken after seq `after_seq` (a quiet link)."""
    pb.tap.wait_seq(after_seq + n, timeout=60)
    mem = [
        m.data["mem_free"] for m in pb.tap.telemetry() if after_seq < m.data["seq"] <= after_seq + n
    ]
    return int(statistics.median(mem))


def _in_order_without_gaps(seqs: list[int]) -> list[int]:
    # QoS 1 is at least once: a sample in flight when the link went may come twice, right after
    # itself. Anything else out of order, or missing, is a failure.
    uniq = list(dict.fromkeys(seqs))
    assert uniq == sorted(uniq), f"out of order: {seqs}"
    assert uniq == list(range(uniq[0], uniq[-1] + 1)), f"gaps: {seqs}"
    dups = [a for a, b in itertools.pairwise(seqs) if a == b]
    assert len(seqs) - len(uniq) == len(dups), f"a duplicate that is not a resend: {seqs}"
    return uniq


def _check_waits(waits: list[tuple[int, int]]) -> None:
    assert waits, "no retry lines"
    assert [n for n, _ in waits] == list(range(1, len(waits) + 1))
    for n, w in waits:
        lo, hi = scenarios.backoff_bounds_ms(n)
        assert lo <= w < hi <= scenarios.BACKOFF_MAX_MS, (n, w)
    # The random half of the wait: 0 exactly has probability 2**-16 per retry.
    assert any(w != scenarios.backoff_bounds_ms(n)[0] for n, w in waits), waits


def test_c_five_second_cut_backoff_reconnect_buffered_telemetry_in_order(
    net: ProxiedBoard,
) -> None:
    board, tap = net.board, net.tap
    before = _steady_mem(net, tap.wait_seq(3, 60).data["seq"])
    start = len(board.lines())
    last_before = max(tap.seqs())
    net.proxy.cut(5.0)
    t_cut = time.monotonic()
    scenarios.wait_count(board, RECONNECTED, 1, timeout=60)
    t_back = time.monotonic()
    waits = scenarios.retry_waits(board.lines()[start:])
    _check_waits(waits)
    # The cut lasted 5 s; the retries add up past it, and the board was back within one wait.
    assert sum(w for _, w in waits[:-1]) < 5000 <= sum(w for _, w in waits) + 1000, waits
    assert t_back - t_cut < 5 + waits[-1][1] / 1000 + 5, (t_back - t_cut, waits)
    ev = tap.wait_event(1, timeout=30, kind="reconnected").data
    assert ev["event"] == "reconnected"
    assert ev["failures"] == len(waits)
    assert ev["dropped"] == 0
    # Samples taken while the link was down: one per interval of retry wait.
    assert ev["queued"] >= sum(w for _, w in waits) // INTERVAL_MS - 1, (ev, waits)
    assert "errno" in ev["last_error"] or "mqtt" in ev["last_error"]
    # Everything sampled during the cut arrives, in order, then live telemetry continues.
    resumed = tap.wait_seq(last_before + ev["queued"] + 5, timeout=30).data["seq"]
    uniq = _in_order_without_gaps(tap.seqs())
    assert uniq[0] <= last_before < resumed <= uniq[-1]
    after = _steady_mem(net, max(tap.seqs()))
    assert abs(after - before) <= HEAP_TOLERANCE, (before, after)
    print(
        f"5 s cut: waits {waits} ms, back after {t_back - t_cut:.1f} s, queued {ev['queued']}, "
        f"mem_free {before} -> {after}"
    )


def test_c_flapping_link_reconnects_every_time_and_loses_nothing(net: ProxiedBoard) -> None:
    board, tap = net.board, net.tap
    before = _steady_mem(net, max(tap.seqs()))
    reconnects = scenarios.count_lines(board, RECONNECTED)
    events = len(tap.events("reconnected"))
    dropped = tap.events("reconnected")[-1].data["dropped"] if events else 0  # a count since boot
    # Down 1.5 s: the board needs at most 3 tries (<= 1 + 2 + 4 s of waits) to see it up again,
    # so an up time of 7 s always lets it reconnect before the next cut.
    net.proxy.flap(down_s=1.5, up_s=7.0, cycles=3)
    net.proxy.wait_flapping(timeout=60)
    scenarios.wait_count(board, RECONNECTED, reconnects + 3, timeout=30)
    evs = [tap.wait_event(events + i, 30, "reconnected").data for i in (1, 2, 3)]
    assert all(e["dropped"] == dropped and 1 <= e["failures"] <= 3 for e in evs), evs
    tap.wait_seq(max(tap.seqs()) + 3, timeout=30)
    _in_order_without_gaps(tap.seqs())
    after = _steady_mem(net, max(tap.seqs()))
    assert abs(after - before) <= HEAP_TOLERANCE, (before, after)
    assert net.proxy.stats.cuts >= 4  # the 5 s cut, then the three flaps
    print(f"flapping: events {evs}, mem_free {before} -> {after}")
