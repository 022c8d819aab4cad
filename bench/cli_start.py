"""How long `qlink` takes to start and answer, against a bare interpreter importing what any
qlink command needs at least (typer and cryptography's x509: the peer).

Each command runs as a user runs it (the installed `qlink` script, a fresh process, output to
/dev/null), warm (one untimed run first, so the page cache and .pyc files are there), in
rounds: every round runs every command once, so a noisy neighbour on the shared machine slows
all of them alike. The figure is the median of the rounds; `ratio` is that median over the
peer's. The goal is a ratio of at most 2.0 for every command.

The read commands run against a small data directory made first with `qlink batch create`,
`qlink batch import` (a few generated identities) and `qlink token create`. For the slowest
read command, `python -X importtime` says which packages it pays for: the notes list the
biggest, by the sum of their modules' own import time.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

GOAL = 2.0  # at most this many times the peer
ROUNDS = 15
DEVICES = 20
PEER = "import typer, cryptography.x509"
COMMANDS = [
    ("--help",),
    ("--version",),
    ("devices", "--json"),
    ("batch", "list", "--json"),
    ("audit", "--json"),
    ("token", "list", "--json"),
    ("rig", "--help"),
    ("puf", "--help"),
    ("batch", "--help"),
]
# The CLI's own part of a read command: `qlink devices --json` on a directory without qlink
# data goes through typer, its option parsing and the data check, and stops before the store.
NO_DATA = "no-qlink-data"


def _identities(n: int) -> str:
    lines = []
    for _ in range(n):
        pub = (
            ec.generate_private_key(ec.SECP256R1())
            .public_key()
            .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        )
        lines.append(f"{hashlib.sha256(pub).hexdigest()},{pub.hex()}")
    return "\n".join(lines) + "\n"


def _qlink() -> str:
    return str(Path(sys.executable).with_name("qlink"))


def _timed(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ms = (time.perf_counter() - t0) * 1e3
    if proc.returncode != (1 if NO_DATA in argv else 0):
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr[-500:]!r}")
    return ms


def _importtime(
    args: tuple[str, ...], env: dict[str, str], cwd: Path
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """While `qlink ARGS` runs: the imports made at the top (the script's, and each lazy import
    in a function) with their cumulative time, and the own time summed per top-level package;
    in ms, biggest first."""
    script = f"import sys; sys.argv = ['qlink', *{list(args)!r}]\nfrom host.cli import main\nmain()"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", script],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=True,
    )
    top: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative_us, name = line.removeprefix("import time:").split("|")
        if not name.startswith("  "):  # " name": imported at the top, not by another import
            top[name.strip()] += int(cumulative_us) / 1e3
        own[name.strip().split(".")[0]] += int(self_us) / 1e3
    return top.most_common(), own.most_common()


def run() -> dict:
    figures: dict[str, dict[str, float]] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="qlink-cli-start-") as tmp:
        cwd = Path(tmp)
        data = cwd / "data"
        env = dict(os.environ, QLINK_DATA_DIR=str(data), COLUMNS="100", NO_COLOR="1")
        env.pop("QLINK_DATABASE_URL", None)
        # Python's default: the warm-up run leaves the .pyc files a user's later runs load. An
        # environment that forbids writing them (PYTHONDONTWRITEBYTECODE) would have every run
        # compile qlink's modules from source while the peer's packages have theirs from pip.
        if env.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
            notes.append(
                "PYTHONDONTWRITEBYTECODE was set here and is left out of the commands' "
                "environment, as in a user's default one: .pyc files are written and used"
            )
        ids = cwd / "ids.csv"
        ids.write_text(_identities(DEVICES))
        for setup in (
            ("batch", "create", "bench"),
            ("batch", "import", "bench", str(ids), "--no-progress"),
            ("token", "create", "bench"),
        ):
            _timed([_qlink(), *setup], env, cwd)

        runs: dict[str, list[str]] = {"peer": [sys.executable, "-c", PEER]}
        runs |= {"qlink " + " ".join(c): [_qlink(), *c] for c in COMMANDS}
        (cwd / NO_DATA).mkdir()
        own_part = "qlink devices, no data"
        runs[own_part] = [_qlink(), "devices", "--json", "--data-dir", NO_DATA]
        for argv in runs.values():  # warm
            _timed(argv, env, cwd)
        times: dict[str, list[float]] = {label: [] for label in runs}
        for _ in range(ROUNDS):
            for label, argv in runs.items():
                times[label].append(_timed(argv, env, cwd))
        peer = statistics.median(times["peer"])
        figures["peer"] = {"ms": round(peer, 1), "ratio": 1.0}
        for label in runs:
            if label == "peer":
                continue
            ms = statistics.median(times[label])
            figures[label] = {"ms": round(ms, 1), "ratio": round(ms / peer, 2)}
            verdict = "meets" if ms / peer <= GOAL else "not met"
            if label == own_part:
                notes.append(
                    f"{label}: {ms / peer:.2f} x the peer: the CLI's own part of a read command "
                    "(typer's option parsing and the data check, refused before the store)"
                )
            else:
                notes.append(f"{label}: {ms / peer:.2f} x the peer, goal {GOAL:.1f}: {verdict}")

        slowest = max(COMMANDS, key=lambda c: figures["qlink " + " ".join(c)]["ms"])
        # The figure the documents quote: the slowest command against the peer.
        figures["slowest"] = dict(figures["qlink " + " ".join(slowest)])
        top, own = _importtime(slowest, env, cwd)
        command = "qlink " + " ".join(slowest)
        notes.append(
            f"{command} imports (python -X importtime, cumulative): "
            + ", ".join(f"{name} {ms:.0f} ms" for name, ms in top[:6])
        )
        notes.append(
            f"{command} imports, own time per package: "
            + ", ".join(f"{name} {ms:.0f} ms" for name, ms in own[:8])
        )
    notes.append(
        f"peer: {sys.executable} -c {PEER!r}; median of {ROUNDS} warm runs each, in rounds; "
        f"read commands on a data directory of one batch of {DEVICES} devices and one token"
    )
    return {"goal_ratio": GOAL, "rounds": ROUNDS, "figures": figures, "notes": notes}
