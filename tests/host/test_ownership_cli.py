"""`qlink device transfer|claim|reenrol|decommission` and `qlink batch transfer` in-process:
codes shown once, JSON on stdout, errors as one sentence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cliutil import run_qlink

from hil.simdevice import ApiResponse, SimDevice
from host.server.application import Application
from host.server.policy import MemoryPolicy
from host.server.settings import Settings


@pytest.fixture
def qlink(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path):
    monkeypatch.setenv("QLINK_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COLUMNS", "200")
    return lambda *args: run_qlink(monkeypatch, capsys, *args)


@pytest.fixture
def onboarded(tmp_path: Path) -> list[str]:
    """Two onboarded devices in batch `line` of acme, and batch `fleet` of globex."""
    settings = Settings(data_dir=tmp_path / "data")
    app = Application.for_server(settings, broker_port=1, policy=MemoryPolicy())
    try:
        for tenant, batch in (("acme", "line"), ("globex", "fleet")):
            app.create_tenant(tenant)
            app.create_batch(batch, tenant)
        devices = [SimDevice("https://localhost", b"") for _ in range(2)]
        app.import_devices("line", [d.csv_line() for d in devices])
        for d in devices:
            h = app.onboarding.hello({"device_id": d.device_id, "public_key": d.public_key.hex()})
            app.onboarding.proof(d.proof_body(ApiResponse(200, h)))
    finally:
        app.close()
    return [d.device_id for d in devices]


def commands(qlink: Any, device_id: str) -> list[dict[str, Any]]:
    code, out, err = qlink("device", "commands", device_id, "--json")
    assert code == 0, err
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


def test_device_transfer_prints_the_code_once_and_claim_sends_the_transfer(
    qlink: Any, onboarded: list[str]
) -> None:
    device_id = onboarded[0]
    code, out, err = qlink("device", "transfer", device_id)
    assert code == 0, err
    transfer_code = out.strip()
    assert transfer_code.startswith("qlt_") and out.count("\n") == 1
    assert "it is not shown again" in err
    code, out, err = qlink(
        "device", "claim", transfer_code, "--tenant", "globex", "--batch", "fleet", "--json"
    )
    assert code == 0, err
    claim = json.loads(out)
    assert (claim["tenant"], claim["batch"], claim["state"]) == ("globex", "fleet", "pending")
    assert device_id not in out
    [cmd] = commands(qlink, device_id)
    assert (cmd["kind"], cmd["args"], cmd["state"]) == ("transfer", {"epoch": 1}, "queued")
    # The code is spent.
    code, out, err = qlink("device", "claim", transfer_code, "--tenant", "acme", "--batch", "line")
    assert code == 1 and out == ""
    assert err.strip().startswith("error: this transfer code was used already")
    assert "Traceback" not in err


def test_device_transfer_json_names_the_device_code_and_expiry(
    qlink: Any, onboarded: list[str]
) -> None:
    code, out, err = qlink("device", "transfer", onboarded[0], "--ttl", "3600", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert set(doc) == {"device_id", "code", "expires_at"} and doc["device_id"] == onboarded[0]


def test_batch_transfer_gives_one_code_per_device(qlink: Any, onboarded: list[str]) -> None:
    code, out, err = qlink("batch", "transfer", "line", "--json")
    assert code == 0, err
    rows = json.loads(out)  # one document, as every --json
    assert all(set(r) == {"device_id", "code", "expires_at"} for r in rows)
    assert sorted(r["device_id"] for r in rows) == sorted(onboarded)
    assert "2 transfer code(s) for batch line; they are not shown again" in err
    code, out, err = qlink("batch", "transfer", "line")
    assert code == 0 and all(d in out for d in onboarded) and "code" in out


def test_a_bad_code_is_one_sentence_and_binds_nothing(qlink: Any, onboarded: list[str]) -> None:
    before = qlink("audit", "--json")[1]
    code, out, err = qlink(
        "device", "claim", "qlt_" + "y" * 32, "--tenant", "globex", "--batch", "fleet"
    )
    assert code == 1 and out == ""
    assert err.strip().startswith("error: no such transfer code; check it")
    code, _, err = qlink("device", "claim", "hello", "--tenant", "globex", "--batch", "fleet")
    assert code == 1 and "a transfer code is qlt_ followed by 32" in err
    assert qlink("audit", "--json")[1] == before


def test_device_reenrol_sends_the_command(qlink: Any, onboarded: list[str]) -> None:
    code, out, err = qlink("device", "reenrol", onboarded[0], "--json")
    assert code == 0, err
    assert json.loads(out)["kind"] == "reenrol"
    assert [c["kind"] for c in commands(qlink, onboarded[0])] == ["reenrol"]


def test_decommission_without_a_running_server_says_so_and_sends_nothing(
    qlink: Any, onboarded: list[str]
) -> None:
    before = qlink("devices", "--json")[1], qlink("audit", "--json")[1]
    code, _, err = qlink("device", "decommission", onboarded[0])
    assert code == 1
    assert "the server is not running; start it (qlink server)" in err
    assert commands(qlink, onboarded[0]) == []
    assert (qlink("devices", "--json")[1], qlink("audit", "--json")[1]) == before


@pytest.mark.parametrize(
    "command",
    [
        ("device", "transfer"),
        ("device", "claim"),
        ("device", "reenrol"),
        ("device", "decommission"),
        ("batch", "transfer"),
    ],
)
def test_every_ownership_command_has_json(qlink: Any, command: tuple[str, ...]) -> None:
    code, out, _ = qlink(*command, "--help")
    assert code == 0 and "--json" in out
