"""The onboarding benchmark's waves (bench/onboarding.py): every device onboards in exactly one
wave of its side, and a side's rate and CPU are sums over its waves, so that the real server and
the floor are compared over the same stretches of the machine's time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import bench.onboarding as onboarding
from bench.compare import ROOT, tree_env
from bench.compare import main as compare_main

# A stand-in `host.cli` of another tree: it names the package it was imported from, and the
# one a worker it spawns (as uvicorn's workers are) imports.
_CLI = """
import multiprocessing, host

def where(q):
    import host
    q.put(host.__file__)

if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=where, args=(q,))
    p.start()
    print(host.__file__)
    print(q.get(timeout=60))
    p.join()
"""


def test_waves_split_a_fleet_once_and_evenly() -> None:
    fleet: list[Any] = list(range(23))
    waves = onboarding._waves(fleet, 5)
    assert sorted(d for w in waves for d in w) == fleet
    assert {len(w) for w in waves} == {4, 5}


def test_a_side_sums_its_waves(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = {"server": 0.0, "children": 0.0}

    def onboard_all(devices: list[Any], concurrency: int) -> tuple[list[float], list[str], float]:
        clock["server"] += 0.002 * len(devices)  # 2 ms of server CPU each
        clock["children"] += 0.001 * len(devices)
        return [0.05] * (len(devices) - 1), ["refused"], 0.01 * len(devices)

    monkeypatch.setattr(onboarding, "_onboard_all", onboard_all)
    monkeypatch.setattr(onboarding, "_children_cpu_s", lambda: clock["children"])
    side = onboarding.Waves()
    for wave in onboarding._waves(list(range(100)), 4):
        side.add(wave, 32, lambda: clock["server"])
    assert len(side.latencies) == 96 and side.errors == ["refused"] * 4
    assert side.wall_s == pytest.approx(1.0)
    assert side.per_s == pytest.approx(96.0)
    assert side.ms_each(side.server_cpu_s) == pytest.approx(200 / 96)
    assert side.ms_each(side.devices_cpu_s) == pytest.approx(100 / 96)


def test_compare_asks_for_a_revision(capsys: pytest.CaptureFixture[str]) -> None:
    assert compare_main([]) == 2
    assert "python -m bench.compare REV" in capsys.readouterr().out


def test_compare_runs_the_older_trees_code_from_the_checkout(tmp_path: Path) -> None:
    # bench.compare starts the older server with `python -m` from the current checkout: the
    # older tree's code must be what runs, in the server and in the workers it spawns.
    tree = tmp_path / "tree"
    (tree / "host").mkdir(parents=True)
    (tree / "host" / "__init__.py").write_text("")
    (tree / "host" / "cli.py").write_text(_CLI)
    out = subprocess.run(
        [sys.executable, "-m", "host.cli"],
        cwd=ROOT,
        env={**os.environ, **tree_env(tree)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    assert out == [str(tree / "host" / "__init__.py")] * 2


def test_compare_names_a_revision_it_cannot_find() -> None:
    with pytest.raises(SystemExit, match="no commit 'no-such-revision'"):
        compare_main(["no-such-revision"])


def test_a_warm_up_that_fails_stops_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        onboarding, "_onboard_all", lambda devices, concurrency: ([], ["refused"], 0.1)
    )
    with pytest.raises(RuntimeError, match="the warm-up failed"):
        onboarding.warm_up([], 32)


def test_interleaved_rotates_the_side_that_goes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def onboard_all(devices: list[Any], concurrency: int) -> tuple[list[float], list[str], float]:
        calls.append(devices[0][0])
        return [0.05] * len(devices), [], 0.1

    monkeypatch.setattr(onboarding, "_onboard_all", onboard_all)
    fleets = {side: [(side, i) for i in range(12)] for side in "abc"}
    sums = onboarding.interleaved([(fleets[s], lambda: 0.0) for s in "abc"], 6, 32)
    firsts = [calls[i] for i in range(0, 18, 3)]
    assert firsts == ["a", "b", "c", "a", "b", "c"]
    assert [len(w.latencies) for w in sums] == [12, 12, 12]
    assert sums[0].wall_s == pytest.approx(0.6)


def test_the_budget_for_a_share_of_the_floor_is_what_reaches_that_share() -> None:
    # A floor of 100 onboardings: 0.6 ms of server CPU and 1.0 ms of devices' CPU each.
    floor = onboarding.Waves([0.01] * 100, wall_s=0.08, server_cpu_s=0.06, devices_cpu_s=0.1)
    budget = onboarding.server_cpu_budget_ms(floor, 0.8)
    assert budget == pytest.approx(1.0)
    # Bound by CPU on the same busy cores, a rate is inversely the CPU of one onboarding: a
    # server spending the budget (its devices as the floor's) reaches 80 % of the floor's
    # rate; a tenth of a millisecond more, less.
    assert (0.6 + 1.0) / (budget + 1.0) == pytest.approx(0.8)
    assert (0.6 + 1.0) / (budget + 0.1 + 1.0) < 0.8
    assert onboarding.server_cpu_budget_ms(floor, 1.0) == pytest.approx(0.6)


def test_the_share_of_each_round_pairs_the_waves_of_that_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    walls = iter([0.1, 0.2, 0.1, 0.25])  # server a, then floor b, in two rounds (b first in 2)

    def onboard_all(devices: list[Any], concurrency: int) -> tuple[list[float], list[str], float]:
        return [0.05] * len(devices), [], next(walls)

    monkeypatch.setattr(onboarding, "_onboard_all", onboard_all)
    a, b = onboarding.interleaved([(list(range(20)), lambda: 0.0)] * 2, 2, 32)
    assert a.wave_rates == pytest.approx([100.0, 40.0])  # 10 devices in 0.1 s, then 0.25 s
    assert b.wave_rates == pytest.approx([50.0, 100.0])
    assert onboarding.round_shares_pct(a, b) == pytest.approx([200.0, 40.0])
    assert a.per_s == pytest.approx(20 / 0.35)  # the run's share is not their mean


def test_a_share_is_given_over_the_run_and_round_by_round() -> None:
    after = onboarding.Waves(latencies=[0.05] * 30, wall_s=0.3, wave_rates=[110.0, 90.0, 100.0])
    before = onboarding.Waves(latencies=[0.05] * 30, wall_s=0.25, wave_rates=[100.0, 100.0, 125.0])
    assert onboarding.reached(after, before) == {
        "reached_pct": 83.3,  # 100/s over the run against 120/s
        "reached_pct_low": 80.0,
        "reached_pct_high": 110.0,
    }
