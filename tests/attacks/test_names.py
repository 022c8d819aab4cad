"""Attacks through the names an operator chooses (tenants, batches, operators): a name that is a
path (`..`) or a wildcard (`*`, `+`, `#`) must be refused where it enters, by the CLI and by the
operator API, before anything is created from it."""

from __future__ import annotations

import json
import sqlite3
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
from attacksuite import Attack

from hil.serverproc import ServerProcess
from hil.simdevice import SimDevice


def _rows(server: ServerProcess, sql: str) -> list[tuple[Any, ...]]:
    return server.query(sql)


def _first_line(text: str) -> str:
    lines = [x.strip() for x in text.strip().splitlines() if x.strip()]
    return lines[-1][:160] if lines else "(nothing)"


def test_tenant_dot_dot_cannot_move_the_azure_export(attack: Attack, server: ServerProcess) -> None:
    attack.expect(
        "tenant `..` in the Azure DPS export",
        "a batch of tenant `..` is refused with the name rule, so no device enrollment is ever "
        "written outside DATA_DIR/azure (where disable and delete look for it)",
    )
    azure = server.data_dir / "azure"
    made = server.cli(
        "batch", "create", "dps-escape", "--tenant", "..", "--policy", "azure", check=False
    )
    attack.observe(f"qlink batch create --tenant ..: exit {made.returncode}")
    stray: list[Path] = []
    if made.returncode == 0:
        # The door is open: finish the attack to show what it gives.
        device = SimDevice(server.api_url, server.root_der())
        ids = server.data_dir / "dps-escape.csv"
        ids.write_text(device.csv_line() + "\n")
        server.cli("batch", "import", "dps-escape", str(ids))
        answer = device.onboard()
        found = [p for p in server.data_dir.rglob(f"{device.device_id}.json")]
        stray = [p for p in found if azure.resolve() not in p.resolve().parents]
        server.cli("device", "disable", device.device_id, check=False)
        status = [json.loads(p.read_text())["provisioningStatus"] for p in stray]
        attack.observe(
            f"onboarding {answer.status}; enrollment written to "
            f"{[str(p.relative_to(server.data_dir)) for p in found]} (outside azure/: "
            f"{len(stray)}); after qlink device disable it is still {status}"
        )
    else:
        attack.observe(f"said: {_first_line(made.stderr)}")
    rows = _rows(server, "SELECT name FROM batches WHERE name = 'dps-escape'")
    attack.observe(f"batches named dps-escape in the store: {len(rows)}")
    assert made.returncode == 1
    assert "letters, digits" in made.stderr
    assert rows == [] and stray == []


def test_tenant_dot_dot_from_before_the_rule_gets_no_file_outside(
    attack: Attack, server: ServerProcess
) -> None:
    attack.expect(
        "tenant `..` already in the store",
        "a batch of tenant `..` recorded before the name rule cannot make the Azure DPS export "
        "write outside DATA_DIR/azure: its device's onboarding is refused and no file is made",
    )
    # A record the store holds from before the rule (the rule now refuses making it).
    with sqlite3.connect(server.data_dir / "registry.sqlite") as db:
        db.execute(
            "INSERT INTO batches (name, tenant, active, policy, created_at)"
            " VALUES ('dps-legacy', '..', 1, 'azure', ?)",
            (time.time(),),
        )
    device = SimDevice(server.api_url, server.root_der())
    ids = server.data_dir / "dps-legacy.csv"
    ids.write_text(device.csv_line() + "\n")
    server.cli("batch", "import", "dps-legacy", str(ids), "--tenant", "..")
    answer = device.onboard()
    found = list(server.data_dir.rglob(f"{device.device_id}.json"))
    state = _rows(server, f"SELECT state FROM devices WHERE device_id = '{device.device_id}'")
    attack.observe(
        f"onboarding answered {answer.status} {answer.body.get('error')}; device state "
        f"{state[0][0]}; enrollment files for it anywhere under DATA_DIR: {len(found)}"
    )
    assert answer.status == 503 and answer.body.get("error") == "broker_unavailable"
    assert "refuses tenant '..'" in str(answer.body.get("detail"))
    assert found == [] and state == [("registered",)]


def test_wildcard_tenants_are_refused(attack: Attack, server: ServerProcess) -> None:
    attack.expect(
        "wildcard tenant names",
        "tenants `*`, `+`, `#` (MQTT and AWS policy wildcards) are refused for batches and "
        "tokens, so none reaches an AWS policy name or topic resource",
    )
    outcomes: dict[str, int] = {}
    for tenant in ("*", "+", "#", "a*b"):
        batch = server.cli(
            "batch", "create", "wild", "--tenant", tenant, "--policy", "aws", check=False
        )
        token = server.cli("token", "create", "wild", "--tenant", tenant, check=False)
        outcomes[f"batch {tenant}"] = batch.returncode
        outcomes[f"token {tenant}"] = token.returncode
    attack.observe("exit codes: " + ", ".join(f"{what} {code}" for what, code in outcomes.items()))
    batches = _rows(server, "SELECT tenant FROM batches WHERE name = 'wild'")
    operators = _rows(server, "SELECT tenant FROM operators WHERE name = 'wild'")
    attack.observe(f"rows made: {len(batches)} batch(es), {len(operators)} operator(s)")
    assert set(outcomes.values()) == {1}
    assert batches == [] and operators == []


def test_operator_api_refuses_path_and_wildcard_names(
    attack: Attack, server: ServerProcess
) -> None:
    attack.expect(
        "path and wildcard names through the operator API",
        "POST /v1/admin/batches and /v1/admin/tokens with a name `..`, `a*`, `x/y`, `#` or a "
        "non-ASCII letter answer 400 bad_request naming the rule and create nothing",
    )
    server.ensure_tenant("acme")
    made = server.cli("token", "create", "names-admin", "--role", "admin", "--tenant", "acme")
    token = made.stdout.strip()
    bad = ["..", "a*", "x/y", "#", "caf\u00e9", "-rf"]
    answers: dict[str, Any] = {}
    with httpx.Client(
        base_url=server.api_url,
        verify=ssl.create_default_context(cafile=str(server.root_pem_path)),
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    ) as api:
        for name in bad:
            r = api.post("/v1/admin/batches", json={"name": name})
            answers[f"batch {name}"] = (r.status_code, r.json().get("error"))
            r = api.post("/v1/admin/tokens", json={"name": name, "role": "viewer"})
            answers[f"token {name}"] = (r.status_code, r.json().get("error"))
        sample = api.post("/v1/admin/batches", json={"name": ".."}).json().get("detail", "")
    counts: dict[str, int] = {}
    for status, error in answers.values():
        counts[f"{status} {error}"] = counts.get(f"{status} {error}", 0) + 1
    attack.observe(f"{len(answers)} requests answered {counts}")
    attack.observe(f"detail: {sample[:100]}...")
    names = ", ".join(f"'{n}'" for n in bad)
    batches = _rows(server, f"SELECT name FROM batches WHERE name IN ({names})")
    operators = _rows(server, f"SELECT name FROM operators WHERE name IN ({names})")
    attack.observe(f"rows made: {len(batches)} batch(es), {len(operators)} operator(s)")
    assert all(a == (400, "bad_request") for a in answers.values())
    assert "letters, digits" in sample
    assert batches == [] and operators == []
