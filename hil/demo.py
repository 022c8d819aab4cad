"""`make demo`: the whole chain on loopback with one emulated board.

CA + server + Mosquitto start; an emulated board is flashed, enrols (factory step: its public
identity is read out), is imported into a batch, powers on, onboards over TLS and publishes
telemetry over mutual TLS; the device table is printed. Every process started is stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from hil.emulated import BoardError, EmulatedBoard
from hil.serverproc import ServerProcess, ServerStartError

REPO = Path(__file__).resolve().parent.parent


class Steps:
    """Numbered, timed steps printed as the demo goes."""

    def __init__(self) -> None:
        self.n = 0
        self.t0 = time.monotonic()

    def __call__(self, text: str) -> None:
        self.n += 1
        print(f"[{time.monotonic() - self.t0:6.1f}s] {self.n:>2}. {text}", flush=True)


def _wait_for_telemetry(
    server: ServerProcess, device_id: str, seq: int, timeout: float
) -> dict[str, Any]:
    """Poll the registry (through the CLI, as an operator would) until telemetry seq >= `seq`."""
    deadline = time.monotonic() + timeout
    while True:
        rows: list[dict[str, Any]] = json.loads(server.cli("devices", "--json").stdout)
        row = next((r for r in rows if r["device_id"] == device_id), None)
        telemetry = (row or {}).get("last_telemetry") or {}
        if row is not None and telemetry.get("seq", 0) >= seq:
            return row
        if time.monotonic() > deadline:
            raise BoardError(f"server registry did not see telemetry seq {seq}: {row}")
        time.sleep(0.5)


def run(work: Path, messages: int) -> int:
    os.environ.setdefault("COLUMNS", "150")  # the device table without wrapped IDs
    step = Steps()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    server = ServerProcess(work / "server")
    board = EmulatedBoard(work / "boards", "board-1")
    try:
        step("starting qlink server: root + issuing CA, registry, device API, managed Mosquitto")
        server.start()
        print(f"       API {server.api_url}   broker mqtts://localhost:{server.broker_port}")

        step("flashing emulated board-1: firmware, unix board HAL, config, pinned root CA")
        board.flash(
            {"server": server.api_url, "root_ca": "ca.der", "telemetry_interval_ms": 1000},
            server.root_der(),
        )

        step("factory enrolment: board-1 reads its SRAM, enrols, reports its public identity")
        ident = board.enrol()
        print(f"       device ID {ident['device_id']}")

        step("importing the identity into batch 'demo'")
        csv = work / "identities.csv"
        csv.write_text(f"{ident['device_id']},{ident['public_key']}\n")
        server.cli("batch", "create", "demo")
        print("       " + server.cli("batch", "import", "demo", str(csv)).stdout.strip())

        step("powering on board-1: identity from silicon, onboarding over TLS")
        board.power_on()
        board.wait_for(r"I mqtt: connected", timeout=90)
        print("       onboarded; connected to the broker with mutual TLS")

        step(f"waiting for {messages} telemetry messages")
        for seq in range(1, messages + 1):
            board.wait_for(rf"published seq={seq}\b", timeout=30)
            print(f"       board-1 published seq={seq}")
        row = _wait_for_telemetry(server, ident["device_id"], messages, timeout=30)
        print(f"       server stored telemetry {json.dumps(row['last_telemetry'])}")

        step("device table (qlink devices)")
        print(server.cli("devices").stdout)
        step(f"done in {time.monotonic() - step.t0:.1f}s; stopping board and server")
        return 0
    except (BoardError, ServerStartError) as e:
        print(f"demo failed: {e}", file=sys.stderr)
        if server.log_path.exists():
            print("server log tail:\n" + server.log_tail(), file=sys.stderr)
        return 1
    finally:
        board.power_off()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "demo-data", help="working folder")
    parser.add_argument("--messages", type=int, default=3, help="telemetry messages to show")
    args = parser.parse_args()
    sys.exit(run(args.work, args.messages))


if __name__ == "__main__":
    main()
