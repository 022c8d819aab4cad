"""(g) Soak: one emulated board at the RP2040 heap budget for 10 minutes; the free heap it
reports in telemetry never falls below a floor. Runs in `make soak` only (QLINK_SOAK=1)."""

from __future__ import annotations

import json
import os
import time

import pytest

from hil.emulated import EmulatedBoard
from hil.serverproc import ServerProcess

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.getenv("QLINK_SOAK") != "1", reason="make soak runs this (10 min)"),
]
SOAK_S = 600
FLOOR = 48 * 1024  # bytes of gc.mem_free() the agent keeps at 192 KiB heap


def test_g_soak_keeps_a_mem_free_floor(server: ServerProcess, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server.cli("batch", "create", "soak")
    b = EmulatedBoard(tmp_path, "soak")
    try:
        b.flash(
            {"server": server.api_url, "root_ca": "ca.der", "telemetry_interval_ms": 1000},
            server.root_der(),
        )
        ident = b.enrol()
        (tmp_path / "s.csv").write_text(f"{ident['device_id']},{ident['public_key']}\n")
        server.cli("batch", "import", "soak", str(tmp_path / "s.csv"))
        b.power_on()
        b.wait_for(r"published seq=1\b", timeout=120)
        lows = []
        end = time.monotonic() + SOAK_S
        while time.monotonic() < end:
            time.sleep(15)
            rows = json.loads(server.cli("devices", "--json").stdout)
            row = next(r for r in rows if r["device_id"] == ident["device_id"])
            lows.append(row["last_telemetry"]["mem_free"])
        # The floor observed, for the soak's log (run with -s to see it).
        print(f"soak: {len(lows)} samples, mem_free floor {min(lows)} B, max {max(lows)} B")
        assert b.running
        assert min(lows) >= FLOOR, lows
        # No leak: mem_free is measured after a collection (agent.telemetry), so the end of the
        # soak shows the same free heap as its start, within what one TLS session's
        # fragmentation moves (test_rig_network.py HEAP_TOLERANCE).
        assert max(lows[:3]) - min(lows[-3:]) <= 2048, lows
    finally:
        b.close()
