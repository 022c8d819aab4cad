"""The server process: `server.json` once ready, and a clean stop (broker too) on a signal."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from hil.serverproc import ServerProcess, ServerStartError

pytestmark = pytest.mark.e2e


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _broker_pid(data_dir: Path) -> int | None:
    conf = str(data_dir / "broker" / "mosquitto.conf")
    out = subprocess.run(["pgrep", "-f", conf], capture_output=True, text=True, check=False)
    pids = [int(p) for p in out.stdout.split()]
    return pids[0] if pids else None


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_server_and_broker(tmp_path: Path, sig: signal.Signals) -> None:
    proc = ServerProcess(tmp_path).start()
    try:
        info = json.loads((tmp_path / "server.json").read_text())
        assert set(info) == {
            "api_url",
            "api_port",
            "broker_host",
            "broker_port",
            "broker_admin_port",
            "pid",
            "puf_drift_pct",
        }
        assert info["api_url"] == f"https://localhost:{info['api_port']}"
        assert info["puf_drift_pct"] == 50  # the default, for `qlink devices --drifting`
        assert _accepts(info["api_port"]) and _accepts(info["broker_port"])
        broker = _broker_pid(tmp_path)
        assert broker is not None
        os.kill(info["pid"], sig)
        assert proc._proc is not None
        # SIGINT ends as KeyboardInterrupt (exit 130); uvicorn re-raises SIGTERM after its
        # shutdown, so that one ends as the signal itself.
        assert proc._proc.wait(timeout=15) == (130 if sig == signal.SIGINT else -sig)
        assert not (tmp_path / "server.json").exists()
        assert not _accepts(info["broker_port"])
        assert _broker_pid(tmp_path) is None
        assert "event=broker_stopped" in proc.log_tail(50)
    finally:
        proc.stop()


def test_start_failure_shows_the_log(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServerStartError, match="exited with status") as info:
            ServerProcess(tmp_path, api_port=port).start()
    assert "Address already in use" in str(info.value)
