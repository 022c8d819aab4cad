"""`make demo`: the whole chain on loopback with two emulated boards.

CA + server + Mosquitto start; an emulated board is flashed, enrols (factory step: its public
identity is read out), is imported into a batch, powers on, onboards over TLS and publishes
telemetry over mutual TLS; the device table is printed. Then one update (docs/ota.md): release
0.2.0 is built from the project's firmware, signed and published, and rolled out to the board,
which downloads, verifies, decrypts, swaps it in at boot and commits it in front of the user;
a second board is offered the same release with its payload altered on the server's disk, and
refuses it. Every process started is stopped.
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


def _echo(board: EmulatedBoard, pattern: str, timeout: float) -> None:
    """Wait for a console line of the board and show it."""
    line = board.wait_for(pattern, timeout=timeout).string.strip()
    print(f"       {board.name}: {line}")


def _rollout(server: ServerProcess, release: str, batch: str) -> int:
    out = server.cli("ota", "rollout", "create", release, "--batch", batch, "--json").stdout
    doc: dict[str, Any] = json.loads(out)
    print(f"       rollout {doc['id']}: {release} to batch {batch!r}, offered by a signed command")
    return int(doc["id"])


def _device_state(server: ServerProcess, rollout: int, timeout: float) -> dict[str, Any]:
    """The rollout's one device once its state is final (committed, rolled back, refused)."""
    deadline = time.monotonic() + timeout
    while True:
        doc = json.loads(server.cli("ota", "rollout", "status", str(rollout), "--json").stdout)
        devices = doc.get("devices") or []
        if devices and devices[0]["state"] in ("committed", "rolled_back", "refused"):
            row: dict[str, Any] = devices[0]
            return row
        if time.monotonic() > deadline:
            raise BoardError(f"rollout {rollout} did not finish: {doc}")
        time.sleep(0.5)


def _telemetry_fw(server: ServerProcess, device_id: str, want: str, timeout: float) -> str:
    """The firmware version the device's latest telemetry names, once it is `want`."""
    deadline = time.monotonic() + timeout
    while True:
        rows: list[dict[str, Any]] = json.loads(server.cli("devices", "--json").stdout)
        row = next((r for r in rows if r["device_id"] == device_id), None)
        fw = str(((row or {}).get("last_telemetry") or {}).get("fw"))
        if fw == want or time.monotonic() > deadline:
            return fw
        time.sleep(0.5)


def _update(
    step: Steps,
    server: ServerProcess,
    work: Path,
    board: EmulatedBoard,
    device_id: str,
    second: EmulatedBoard,
) -> None:
    """One update in front of the user, then a second board refusing an altered payload."""
    step("second board: flashed, enrolled, imported into batch 'demo-b', onboarded")
    second.flash(
        {"server": server.api_url, "root_ca": "ca.der", "telemetry_interval_ms": 1000},
        server.root_der(),
    )
    ident2 = second.enrol()
    csv = work / "identities-b.csv"
    csv.write_text(f"{ident2['device_id']},{ident2['public_key']}\n")
    server.cli("batch", "create", "demo-b")
    server.cli("batch", "import", "demo-b", str(csv))
    second.power_on()
    second.wait_for(r"published seq=1\b", timeout=90)
    print(f"       board-2 {ident2['device_id'][:16]}... online, firmware 0.1.0")

    step("building release 0.2.0: firmware as .mpy for the unix board, manifest signed")
    bundle = work / "unix-0.2.0.qota"
    server.cli("ota", "build", "-", "--version", "0.2.0", "--board", "unix", "--out", str(bundle))
    pub = json.loads(server.cli("ota", "publish", str(bundle), "--json").stdout)
    print(
        f"       published {pub['id']}: {pub['files']} files, {pub['size']} bytes, "
        f"payload encrypted (AES-256-CBC + HMAC-SHA256) under a fresh content key"
    )

    step("rolling out 0.2.0 to board-1 (content key wrapped for its own key by ECDH)")
    rollout = _rollout(server, pub["id"], "demo")
    _echo(board, r"I ota: download from byte", 60)
    _echo(board, r"I ota: \S+ staged", 60)
    _echo(board, r"boot: ota swap to 0\.2\.0", 60)
    _echo(board, r"boot: trial", 30)
    _echo(board, r"I ota: \S+ committed", 90)
    row = _device_state(server, rollout, 30)
    fw = _telemetry_fw(server, device_id, "0.2.0", 30)
    print(f"       server: device {device_id[:16]}... {row['state']}; its telemetry says fw {fw}")

    step("an attacker alters the stored payload (one byte); rollout to board-2")
    payload = server.data_dir / "releases" / pub["id"] / "payload.bin"
    data = bytearray(payload.read_bytes())
    data[len(data) // 2] ^= 0x01
    payload.write_bytes(bytes(data))
    rollout2 = _rollout(server, pub["id"], "demo-b")
    _echo(second, r"W ota: \S+ refused: \w+", 60)
    row2 = _device_state(server, rollout2, 30)
    print(
        f"       server: board-2 {row2['state']} ({row2.get('reason')}); "
        "it still runs 0.1.0, nothing was written where it runs"
    )


def run(work: Path, messages: int) -> int:
    os.environ.setdefault("COLUMNS", "150")  # the device table without wrapped IDs
    step = Steps()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    server = ServerProcess(work / "server")
    board = EmulatedBoard(work / "boards", "board-1")
    second = EmulatedBoard(work / "boards", "board-2")
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

        _console(step, server, ident["device_id"])

        _update(step, server, work, board, ident["device_id"], second)
        step(f"done in {time.monotonic() - step.t0:.1f}s; stopping boards and server")
        return 0
    except (BoardError, ServerStartError) as e:
        print(f"demo failed: {e}", file=sys.stderr)
        if server.log_path.exists():
            print("server log tail:\n" + server.log_tail(), file=sys.stderr)
        return 1
    finally:
        board.power_off()
        second.power_off()
        server.stop()


def _console(step: Any, server: ServerProcess, device_id: str) -> None:
    """A console user signs in over HTTPS and reads the board's page (docs/console.md)."""
    import secrets
    import ssl
    import subprocess

    import httpx

    step("web console: a viewer signs in and reads board-1's page")
    password = secrets.token_urlsafe(18)
    create = ["user", "create", "demo-viewer", "--role", "viewer", "--tenant", "default"]
    where = ["--password-stdin", "--data-dir", str(server.data_dir)]
    subprocess.run(
        [sys.executable, "-m", "host.cli", *create, *where],
        input=password,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    tls = ssl.create_default_context(cafile=str(server.root_pem_path))
    with httpx.Client(base_url=server.api_url, verify=tls, timeout=30) as c:
        c.get("/console/login").raise_for_status()
        form = {"csrf": c.cookies.get("qlink_login_csrf", ""), "name": "demo-viewer"}
        signed_in = c.post("/console/login", data={**form, "password": password})
        if signed_in.status_code != 303:
            raise RuntimeError(f"console sign-in answered {signed_in.status_code}")
        page = c.get(f"/console/devices/{device_id}")
        page.raise_for_status()
    shown = [word for word in ("onboarded", "online") if f">{word}<" in page.text]
    print(f"       {server.api_url}/console/devices/{device_id[:16]}...: {', '.join(shown)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("demo-data"),  # in the folder it runs in (make demo: the checkout's root)
        help="working folder (default: ./demo-data)",
    )
    parser.add_argument("--messages", type=int, default=3, help="telemetry messages to show")
    args = parser.parse_args()
    # Absolute: the boards run in folders of their own and are handed paths under it.
    sys.exit(run(args.work.resolve(), args.messages))


if __name__ == "__main__":
    main()
