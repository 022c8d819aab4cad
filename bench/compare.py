"""`python -m bench.compare REV`: the onboarding server as it was at git revision REV against
the current one, in one run, both next to the floor; writes bench/results/compare.json.

The two servers run from their own trees (REV is checked out in a temporary git worktree) on the
same machine, each with its own data directory, broker and fleet. The floor is bench/_floor.py
replaying the current server's answers. Each side first onboards a warm-up that is not counted
(bench/onboarding.py); then the three sides onboard in waves, and the side that goes first
rotates, so that all three see the same drift of the machine's speed. A claim that a change
kept or improved the onboarding rate (before/after) is read from here. It is not part of
`make bench`: it needs the repository's history.

Environment: QLINK_BENCH_COMPARE_DEVICES (per side, default 4000), QLINK_BENCH_CONCURRENCY (32),
QLINK_BENCH_WORKERS (default: one API worker per core).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

from bench._results import requote, save
from bench.onboarding import (
    _WARM_UP,
    _broker_pid,
    _real_answers,
    _server_cpu_s,
    interleaved,
    pids_cpu_s,
    reached,
    round_shares_pct,
    start_floor,
    warm_up,
)
from hil.serverproc import ServerProcess
from hil.simdevice import SimDevice

ROOT = Path(__file__).resolve().parent.parent
_ROUNDS = 6  # waves per side: each side goes first, second and third twice


@contextlib.contextmanager
def _tree_at(rev: str) -> Iterator[Path]:
    """A checkout of `rev` in a temporary worktree, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="qlink-compare-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev],
            check=True,
            capture_output=True,
        )
        try:
            yield tree
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                check=False,
                capture_output=True,
            )


def tree_env(tree: Path) -> dict[str, str]:
    """The environment in which `python -m ...` runs `tree`'s code. PYTHONPATH alone does not:
    `-m` puts the working directory (the current checkout, where this runs) first on the
    path, so both servers would run the current code. PYTHONSAFEPATH leaves it off, for the
    server and for the workers it spawns."""
    return {"PYTHONPATH": str(tree), "PYTHONSAFEPATH": "1"}


def _cli(proc: ServerProcess, tree: Path, *args: str) -> None:
    """A `qlink` command of `tree`'s own code (its CLI knows its own store)."""
    subprocess.run(
        [sys.executable, "-m", "host.cli", *args, "--data-dir", str(proc.data_dir)],
        check=True,
        capture_output=True,
        env={**os.environ, **tree_env(tree)},
    )


def _start(tree: Path, data: Path, workers: int, n: int) -> tuple[ServerProcess, list[SimDevice]]:
    """`tree`'s server with a fleet of `n` devices imported, and more: one for the floor's
    answers, then the warm-up's."""
    proc = ServerProcess(data, extra_args=["--workers", str(workers)], env=tree_env(tree)).start()
    devices = [
        SimDevice(proc.api_url, proc.root_der(), timeout_s=60) for _ in range(n + 1 + _WARM_UP)
    ]
    csv = data / "fleet.csv"
    csv.write_text("\n".join(d.csv_line() for d in devices) + "\n")
    _cli(proc, tree, "batch", "create", "bench")
    _cli(proc, tree, "batch", "import", "bench", str(csv), "--no-progress")
    return proc, devices


def run(rev: str) -> dict:  # type: ignore[type-arg]
    n = int(os.environ.get("QLINK_BENCH_COMPARE_DEVICES", "4000"))
    concurrency = int(os.environ.get("QLINK_BENCH_CONCURRENCY", "32"))
    workers = int(os.environ.get("QLINK_BENCH_WORKERS", str(os.cpu_count() or 1)))
    found = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "--verify", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        raise SystemExit(
            f"no commit {rev!r} in {ROOT}: give a revision of its history "
            "(a shallow clone has little: git fetch --unshallow)"
        )
    commit = found.stdout.strip()
    sides: dict[str, tuple[list[SimDevice], Callable[[], float]]] = {}
    warm: dict[str, list[SimDevice]] = {}
    with _tree_at(rev) as old, tempfile.TemporaryDirectory(prefix="qlink-bench-") as tmp:
        procs: list[ServerProcess] = []
        floor = None
        try:
            for name, tree in (("before", old), ("after", ROOT)):
                proc, devices = _start(tree, Path(tmp) / name, workers, n)
                procs.append(proc)
                last = devices.pop()
                if name == "after":  # the floor replays the current server's answers
                    floor = start_floor(Path(tmp) / name, _real_answers(last), workers)
                    url = f"https://localhost:{floor.port}"
                    low = [
                        SimDevice(url, proc.root_der(), timeout_s=60) for _ in range(n + _WARM_UP)
                    ]
                    warm["floor"], low = low[n:], low[:n]
                    sides["floor"] = (low, partial(pids_cpu_s, floor.pids()))
                server_cpu = partial(
                    _server_cpu_s, int(proc.info["pid"]), _broker_pid(proc.data_dir)
                )
                warm[name], devices = devices[n:], devices[:n]
                sides[name] = (devices, server_cpu)
            order = ["before", "after", "floor"]
            for name in order:
                warm_up(warm[name], concurrency)
            waves = interleaved([sides[name] for name in order], _ROUNDS, concurrency)
            summed = dict(zip(order, waves, strict=True))
        finally:
            for proc in procs:
                proc.stop()
            if floor is not None:
                floor.stop()
    failed = {name: side.errors[:3] for name, side in summed.items() if side.errors}
    if failed:
        raise RuntimeError(f"onboardings failed: {failed}")
    figures: dict[str, dict[str, float]] = {}
    for name, side in summed.items():
        figures[name] = {
            "per_s": round(side.per_s, 1),
            "server_cpu_ms": round(side.ms_each(side.server_cpu_s), 2),
            "devices_cpu_ms": round(side.ms_each(side.devices_cpu_s), 2),
        }
        if name != "floor":
            figures[name].update(reached(side, summed["floor"]))
    # The two servers' waves of one round ran within seconds of each other: after's rate as a
    # share of before's, round by round, is the comparison the machine's drift disturbs least.
    after, before = summed["after"], summed["before"]
    rounds = round_shares_pct(after, before)
    figures["after_vs_before"] = {
        "pct": round(100 * after.per_s / before.per_s, 1),
        "median_pct": round(statistics.median(rounds), 1),
        "low_pct": round(min(rounds), 1),
        "high_pct": round(max(rounds), 1),
    }
    return {
        "figures": figures,
        "notes": [
            f"before: the server at {commit} ({rev}); after: the working tree's",
            f"{n} devices per side, {concurrency} concurrent, {workers} API workers per server, "
            f"SQLite; {_ROUNDS} waves per side, the first side rotating",
            "reached_pct: the side's rate as a share of the floor's in the same run; _low, "
            "_high: the least and most of it round by round (each round's waves side by side)",
            "after_vs_before/pct: after's rate as a share of before's; median_pct, low_pct, "
            "high_pct: the same round by round",
        ],
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bench.compare REV  (a git revision: the server before)")
        return 2
    started = time.time()
    result = run(argv[0])
    out = save("compare", result, started)
    print(json.dumps(result["figures"], indent=2))
    print(f"written: {out.relative_to(ROOT)}")
    return requote()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
