"""The `qlink` command in-process: output, exit codes, errors as one sentence without a trace."""

from __future__ import annotations

import gc
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cliutil import run_qlink
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from host.server.datadir import NoQlinkData

run = run_qlink


def identity_line() -> str:
    pub = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    return f"{hashlib.sha256(pub).hexdigest()},{pub.hex()}"


@pytest.fixture
def qlink(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path):
    monkeypatch.setenv("QLINK_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COLUMNS", "200")
    return lambda *args: run(monkeypatch, capsys, *args)


def test_help_lists_every_command(qlink) -> None:
    code, out, _ = qlink("--help")
    assert code == 0
    for command in ("server", "batch", "tenant", "devices", "ca"):
        assert command in out


def test_server_help_names_its_options(qlink) -> None:
    code, out, _ = qlink("server", "--help")
    assert code == 0
    for option in ("--data-dir", "--port", "--broker-port", "--hostname", "--challenge-ttl"):
        assert option in out


def test_batch_create_and_list(qlink) -> None:
    assert qlink("tenant", "create", "acme")[0] == 0
    assert qlink("batch", "create", "f1", "--tenant", "acme")[0] == 0
    code, out, _ = qlink("batch", "list")
    assert code == 0 and "f1" in out and "acme" in out


def test_batch_create_twice_is_one_red_sentence(qlink) -> None:
    qlink("batch", "create", "f1")
    code, out, err = qlink("batch", "create", "f1")
    assert code == 1
    assert err.strip() == "error: batch 'f1' already exists; pick another name"
    assert "Traceback" not in out + err


def test_import_then_devices_json(qlink, tmp_path: Path) -> None:
    qlink("batch", "create", "f1")
    lines = [identity_line() for _ in range(2)]
    csv = tmp_path / "ids.csv"
    csv.write_text("\n".join(lines) + "\n")
    code, out, _ = qlink("batch", "import", "f1", str(csv))
    assert code == 0 and "imported 2 device(s)" in out
    code, out, _ = qlink("devices", "--json")
    rows = json.loads(out)
    assert sorted(r["device_id"] for r in rows) == sorted(line.split(",")[0] for line in lines)
    assert {(r["batch"], r["state"], r["last_telemetry"]) for r in rows} == {
        ("f1", "registered", None)
    }
    code, out, _ = qlink("devices")
    assert code == 0 and lines[0][:16] in out and "registered" in out


def test_import_with_bad_rows_names_lines_and_imports_nothing(qlink, tmp_path: Path) -> None:
    qlink("batch", "create", "f1")
    good = identity_line()
    csv = tmp_path / "ids.csv"
    csv.write_text(f"{good}\nnot,a,row\n{good}\n")
    code, _, err = qlink("batch", "import", "f1", str(csv))
    assert code == 1
    assert f"{csv}:2: expected 2 fields" in err
    assert f"{csv}:3: duplicate of line 1" in err
    assert "nothing was imported" in err
    assert json.loads(qlink("devices", "--json")[1]) == []


def test_import_missing_file(qlink, tmp_path: Path) -> None:
    qlink("batch", "create", "f1")
    code, _, err = qlink("batch", "import", "f1", str(tmp_path / "nope.csv"))
    assert code == 1 and "cannot read" in err and "Traceback" not in err


def test_import_into_missing_batch(qlink, tmp_path: Path) -> None:
    qlink("batch", "create", "f1")
    csv = tmp_path / "ids.csv"
    csv.write_text(identity_line())
    code, _, err = qlink("batch", "import", "nope", str(csv))
    assert code == 1 and "qlink batch create nope" in err


def test_ca_root_pem_and_der_are_the_same_certificate(qlink, tmp_path: Path) -> None:
    code, pem, _ = qlink("ca", "root")
    assert code == 0
    out = tmp_path / "root.der"
    assert qlink("ca", "root", "--der", "--out", str(out))[0] == 0
    assert x509.load_pem_x509_certificate(pem.encode()) == x509.load_der_x509_certificate(
        out.read_bytes()
    )
    assert out.read_bytes() == (tmp_path / "data" / "ca" / "root.der").read_bytes()


def test_ca_root_refuses_both_formats(qlink) -> None:
    code, _, err = qlink("ca", "root", "--pem", "--der")
    assert code == 1 and "choose one" in err


def test_data_dir_option_beats_env(qlink, tmp_path: Path) -> None:
    other = tmp_path / "other"
    assert qlink("batch", "create", "x", "--data-dir", str(other))[0] == 0
    assert (other / "registry.sqlite").exists()
    assert not (tmp_path / "data" / "registry.sqlite").exists()


def test_bad_port_is_one_sentence(qlink) -> None:
    code, _, err = qlink("server", "--port", "70000")
    assert code == 1 and "api_port must be between 0 and 65535" in err


def test_entry_point_runs_as_module(tmp_path: Path) -> None:
    for command in (("batch", "create", "f1"), ("batch", "list")):
        proc = subprocess.run(
            [sys.executable, "-m", "host.cli", *command, "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
    assert "f1" in proc.stdout


# -- start-up: what `qlink --help` and `qlink --version` load ------------------------------------
_HEAVY = (
    "numpy",
    "matplotlib",
    "sqlalchemy",
    "alembic",
    "fastapi",
    "uvicorn",
    "httpx",
    "pydantic",
    "serial",
    "hil.rigcli",
    "hil.pufcli",
    "hil.targets",
    "hil.build",
    "hil.emulated",
    "host.puf",
    "host.server.store",
    "host.server.application",
    "host.server.ca",
    "rich.progress",
)


def modules_after(*args: str) -> set[str]:
    """The modules a fresh interpreter holds after running `qlink ARGS` in-process."""
    script = (
        "import io, json, sys\n"
        f"sys.argv = ['qlink', *{list(args)!r}]\n"
        "from host.cli import main\n"
        "stdout, sys.stdout = sys.stdout, io.StringIO()\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "sys.stdout = stdout\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(proc.stdout))


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in _HEAVY or m.startswith(_HEAVY))


@pytest.mark.parametrize("args", [("--help",), ("--version",), ("batch", "--help")])
def test_help_and_version_load_no_plugin_database_or_server_module(args: tuple[str, ...]) -> None:
    loaded = modules_after(*args)
    assert "host.cli" in loaded  # the script did run the command
    assert heavy(loaded) == []


@pytest.mark.parametrize(
    "args", [("devices", "--json"), ("batch", "list", "--json"), ("audit", "--json")]
)
def test_read_commands_load_no_orm_migration_or_web_framework(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    from host.server.store import Store

    Store(tmp_path / "registry.sqlite").close()  # a data directory at the newest schema
    loaded = modules_after(*args, "--data-dir", str(tmp_path))
    assert "host.server.store" in loaded  # the command did read the store
    for module in ("sqlalchemy", "alembic", "fastapi", "uvicorn", "cryptography.x509"):
        assert module not in loaded


def test_help_does_not_scan_every_distribution() -> None:
    assert "importlib.metadata" not in modules_after("--help")


def test_plugin_group_help_loads_its_group_but_not_its_commands_imports() -> None:
    loaded = modules_after("rig", "--help")
    assert "hil.rigcli" in loaded
    assert [m for m in heavy(loaded) if m != "hil.rigcli"] == []
    loaded = modules_after("puf", "--help")
    assert "hil.pufcli" in loaded
    assert [m for m in heavy(loaded) if m != "hil.pufcli"] == []


def test_version_prints_the_installed_version(qlink) -> None:
    from importlib.metadata import version

    code, out, _ = qlink("--version")
    assert code == 0 and out == f"qlink {version('qlink')}\n"


def test_help_lists_plugin_groups_with_their_line(qlink) -> None:
    code, out, _ = qlink("--help")
    assert code == 0
    assert re.search(r"\brig\s+List targets, flash a board", out)
    assert re.search(r"\bpuf\s+Statistics of N power-up reads", out)


def test_plugin_groups_work_when_invoked(qlink) -> None:
    code, out, _ = qlink("rig", "list", "--json")
    assert code == 0
    rows = json.loads(out)
    boards = {r["name"]: r["board"] for r in rows if r["kind"] == "board"}
    assert boards["rp2040"]["mpy_arch"] == "armv6m"
    assert rows[-1]["kind"] == "emulated"
    code, out, _ = qlink("puf", "--help")
    assert code == 0 and "report" in out


def test_a_plugin_that_cannot_load_is_listed_and_says_why_when_used(
    qlink, monkeypatch: pytest.MonkeyPatch
) -> None:
    import host.cli

    monkeypatch.setattr(host.cli, "_plugins", lambda: {"ghost": "hil.no_such_module:app"})
    code, out, _ = qlink("--help")
    assert code == 0 and re.search(r"\bghost\s+\(unavailable: no module hil.no_such_module\)", out)
    code, out, err = qlink("ghost", "anything")
    assert code == 1
    assert "'qlink ghost' cannot load (ModuleNotFoundError" in err and "make setup" in err
    assert "Traceback" not in out + err


def test_plugin_entry_points_are_read_from_the_installed_distribution() -> None:
    from importlib.metadata import entry_points

    from host.cli import _plugins

    expected = {ep.name: ep.value for ep in entry_points(group="qlink.cli")}
    assert _plugins() == expected and {"rig", "puf"} <= set(expected)


# -- --json: one document on stdout, messages on stderr --------------------------------------------
def import_ids(qlink, tmp_path: Path, batch: str, n: int) -> list[str]:
    lines = [identity_line() for _ in range(n)]
    csv = tmp_path / f"{batch}-{n}.csv"
    csv.write_text("\n".join(lines) + "\n")
    code, _, err = qlink("batch", "import", batch, str(csv), "--no-progress")
    assert code == 0, err
    return [line.split(",")[0] for line in lines]


def test_batch_commands_report_json(qlink, tmp_path: Path) -> None:
    qlink("tenant", "create", "acme")
    code, out, _ = qlink("batch", "create", "f1", "--tenant", "acme", "--json")
    assert code == 0
    created = json.loads(out)
    assert (created["name"], created["tenant"], created["active"], created["devices"]) == (
        "f1",
        "acme",
        True,
        0,
    )
    csv = tmp_path / "ids.csv"
    csv.write_text(identity_line() + "\n" + identity_line() + "\n")
    code, out, _ = qlink("batch", "import", "f1", str(csv), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["imported"] == 2 and (doc["batch"]["name"], doc["batch"]["devices"]) == ("f1", 2)
    code, out, _ = qlink("batch", "import", "f1", str(csv), "--json")
    assert json.loads(out)["imported"] == 0
    code, out, _ = qlink("batch", "disable", "f1", "--json")
    assert code == 0 and json.loads(out)["active"] is False
    code, out, _ = qlink("batch", "enable", "f1", "--json")
    assert code == 0 and json.loads(out)["active"] is True
    code, out, _ = qlink("batch", "list", "--json")
    assert code == 0
    [row] = json.loads(out)
    assert (row["name"], row["tenant"], row["active"], row["devices"]) == ("f1", "acme", True, 2)
    assert row["created_at"] == created["created_at"]


def test_json_errors_keep_their_exit_code_and_print_nothing_on_stdout(qlink) -> None:
    qlink("batch", "create", "f1")
    code, out, err = qlink("batch", "create", "f1", "--json")
    assert code == 1 and out == "" and "already exists" in err
    code, out, err = qlink("batch", "disable", "nope", "--json")
    assert code == 1 and out == "" and "qlink batch create nope" in err


def test_token_commands_report_json(qlink) -> None:
    qlink("tenant", "create", "acme")
    code, out, err = qlink(
        "token", "create", "alice", "--role", "admin", "--tenant", "acme", "--json"
    )
    assert code == 0 and "not shown again" in err
    doc = json.loads(out)
    assert doc["token"].startswith("qlk_")
    assert (doc["name"], doc["role"], doc["tenant"]) == ("alice", "admin", "acme")
    code, out, _ = qlink("token", "list", "--json")
    [row] = json.loads(out)
    assert (row["name"], row["tenant"], row["role"], row["revoked"]) == (
        "alice",
        "acme",
        "admin",
        False,
    )
    assert row["created_at"] > 0 and doc["token"] not in out
    code, out, _ = qlink("token", "revoke", "alice", "--tenant", "acme", "--json")
    assert code == 0 and json.loads(out) == {"revoked": 1, "name": "alice", "tenant": "acme"}
    assert json.loads(qlink("token", "list", "--json")[1])[0]["revoked"] is True


def test_every_list_and_result_command_has_json(qlink) -> None:
    for command in (
        ("batch", "list"),
        ("batch", "create"),
        ("batch", "import"),
        ("batch", "enable"),
        ("batch", "disable"),
        ("token", "list"),
        ("token", "create"),
        ("token", "revoke"),
        ("device", "revoke"),
        ("device", "disable"),
        ("device", "enable"),
        ("devices",),
        ("audit",),
        ("rig", "list"),
        ("login",),
        ("batch", "transfer"),
    ):
        code, out, _ = qlink(*command, "--help")
        assert code == 0 and "--json" in out, command


# -- qlink devices: filters ----------------------------------------------------------------------
def set_device(tmp_path: Path, device_id: str, **values: object) -> None:
    """Put a device in a state the CLI cannot reach without a server and a board."""
    import sqlite3

    db = sqlite3.connect(tmp_path / "data" / "registry.sqlite")
    try:
        with db:
            for column, value in values.items():
                db.execute(
                    f"UPDATE devices SET {column} = ? WHERE device_id = ?", (value, device_id)
                )
    finally:
        db.close()


def listed(qlink, *args: str) -> list[str]:
    code, out, err = qlink("devices", "--json", *args)
    assert code == 0, err
    return [d["device_id"] for d in json.loads(out)]


def test_devices_filters_by_batch_state_and_pages(qlink, tmp_path: Path) -> None:
    qlink("batch", "create", "f1")
    qlink("batch", "create", "f2")
    f1 = sorted(import_ids(qlink, tmp_path, "f1", 4))
    f2 = sorted(import_ids(qlink, tmp_path, "f2", 2))
    set_device(tmp_path, f1[0], state="onboarded")
    set_device(tmp_path, f1[1], state="onboarded", disabled=1)
    set_device(tmp_path, f1[2], state="revoked")
    assert listed(qlink) == f1 + f2  # by batch, then ID
    assert listed(qlink, "--batch", "f2") == f2
    assert listed(qlink, "--batch", "nope") == []
    assert listed(qlink, "--state", "registered") == [f1[3], *f2]
    assert listed(qlink, "--state", "onboarded") == f1[:2]
    assert listed(qlink, "--state", "revoked") == [f1[2]]
    assert listed(qlink, "--state", "disabled") == [f1[1]]
    assert listed(qlink, "--state", "registered", "--batch", "f1") == [f1[3]]
    assert listed(qlink, "--limit", "2") == f1[:2]
    assert listed(qlink, "--limit", "2", "--offset", "2") == f1[2:]
    assert listed(qlink, "--offset", "5") == f2[1:]
    assert listed(qlink, "--limit", "0") == []
    code, out, _ = qlink("devices", "--state", "disabled")
    assert code == 0 and "onboarded (disabled)" in out


def test_devices_drifting_uses_the_running_servers_threshold(qlink, tmp_path: Path) -> None:
    qlink("batch", "create", "f1")
    qlink("batch", "create", "f2")
    f1 = sorted(import_ids(qlink, tmp_path, "f1", 3))
    f2 = sorted(import_ids(qlink, tmp_path, "f2", 1))
    for device_id, used in zip((*f1, *f2), (20, 35, 60, 90), strict=True):
        set_device(tmp_path, device_id, puf_used_pct=used)
    set_device(tmp_path, f1[2], state="onboarded")
    assert listed(qlink, "--drifting") == [f1[2], *f2]  # no server: the default, 50 %
    # A server started with --puf-drift 30 says so in its server.json.
    server_json = tmp_path / "data" / "server.json"
    server_json.write_text(json.dumps({"api_port": 1, "pid": 1, "puf_drift_pct": 30}))
    assert listed(qlink, "--drifting") == [f1[1], f1[2], *f2]
    assert listed(qlink, "--drifting", "--drift-pct", "70") == f2
    # It combines with the other filters and pages.
    assert listed(qlink, "--drifting", "--batch", "f1") == f1[1:]
    assert listed(qlink, "--drifting", "--state", "onboarded") == [f1[2]]
    assert listed(qlink, "--drifting", "--limit", "1", "--offset", "1") == [f1[2]]
    server_json.write_text("{not json")  # a torn or foreign file: the default again
    assert listed(qlink, "--drifting") == [f1[2], *f2]
    code, out, err = qlink("devices", "--drift-pct", "30")
    assert code == 2 and out == "" and "--drift-pct goes with --drifting" in err
    code, _, err = qlink("devices", "--drifting", "--drift-pct", "0")
    assert code == 2 and "--drift-pct" in err


def test_devices_refuses_an_unknown_state_or_a_negative_page(qlink) -> None:
    qlink("batch", "create", "f1")
    code, out, err = qlink("devices", "--state", "lost")
    assert code == 2 and out == ""
    assert "'lost' is not one of 'registered', 'onboarded', 'revoked', 'disabled'" in err
    code, _, err = qlink("devices", "--limit", "-1")
    assert code == 2 and "--limit" in err
    code, _, err = qlink("devices", "--offset", "-1")
    assert code == 2 and "--offset" in err


# -- tables say their times are UTC ------------------------------------------------------------
def test_table_times_say_utc(qlink, tmp_path: Path) -> None:
    qlink("batch", "create", "f1")
    import_ids(qlink, tmp_path, "f1", 1)
    qlink("token", "create", "alice")
    out = qlink("devices")[1]
    assert "cert expires (UTC)" in out and "last seen (UTC)" in out
    assert "created (UTC)" in qlink("token", "list")[1]
    assert "created (UTC)" in qlink("batch", "list")[1]
    assert "when (UTC)" in qlink("audit")[1]


# -- a directory without qlink data ----------------------------------------------------------------
def snapshot(root: Path) -> dict[str, bytes] | None:
    if not root.exists():
        return None
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"/" for p in root.rglob("*")
    }


NEEDS_DATA = [
    ("devices",),
    ("devices", "--json"),
    ("batch", "list"),
    ("batch", "list", "--json"),
    ("audit", "--json"),
    ("token", "list"),
    ("batch", "export", "f1"),
    ("batch", "import", "f1", "IDS"),
    ("batch", "disable", "f1"),
    ("token", "revoke", "alice"),
]


@pytest.mark.parametrize("where", ["missing", "empty", "other files"])
@pytest.mark.parametrize("command", NEEDS_DATA, ids=" ".join)
def test_a_command_without_qlink_data_refuses_and_creates_nothing(
    qlink, tmp_path: Path, where: str, command: tuple[str, ...]
) -> None:
    target = tmp_path / "elsewhere"
    if where != "missing":
        target.mkdir()
    if where == "other files":
        (target / "notes.txt").write_text("not qlink's\n")
    ids = tmp_path / "ids.csv"
    ids.write_text(identity_line() + "\n")
    before = snapshot(target)
    args = [str(ids) if a == "IDS" else a for a in command]
    code, out, err = qlink(*args, "--data-dir", str(target))
    assert code == 1 and out == ""
    assert err.strip() == f"error: {NoQlinkData(target)}"
    assert snapshot(target) == before


@pytest.mark.parametrize(
    ("command", "made"),
    [
        (("batch", "create", "f1"), "registry.sqlite"),
        (("token", "create", "alice"), "registry.sqlite"),
        (("ca", "root"), "ca/root.pem"),
    ],
)
def test_a_command_that_makes_the_first_records_creates_the_data(
    qlink, tmp_path: Path, command: tuple[str, ...], made: str
) -> None:
    target = tmp_path / "fresh"
    code, _, err = qlink(*command, "--data-dir", str(target))
    assert code == 0, err
    assert (target / made).exists()
    if made == "registry.sqlite":
        code, _, err = qlink("batch", "list", "--data-dir", str(target))
        assert code == 0, err


def test_the_cli_json_of_every_read_model_is_its_model_dump(qlink, tmp_path: Path) -> None:
    from host.server.application import Application
    from host.server.schemas import plain
    from host.server.settings import Settings

    qlink("batch", "create", "m1")
    ids = import_ids(qlink, tmp_path, "m1", 2)
    set_device(tmp_path, ids[0], state="onboarded", disabled=1)
    qlink("token", "create", "viewer1", "--role", "viewer")
    app = Application.for_operator(Settings(data_dir=tmp_path / "data"))
    try:
        models: list[Any] = [
            *app.devices(),
            *app.batches(),
            *app.audit(),
            *app.operators(),
            app.export_batch("m1"),
        ]
        assert {type(m).__name__ for m in models} == {
            "DeviceRecord",
            "BatchOut",
            "AuditOut",
            "OperatorOut",
            "BatchExport",
        }
        for m in models:
            assert plain(m) == m.model_dump(mode="json")
            assert "public_key" not in plain(m) or isinstance(plain(m)["public_key"], str)
        assert plain(models) == [m.model_dump(mode="json") for m in models]
    finally:
        app.close()


def test_a_device_change_without_a_running_server_says_so_and_changes_nothing(
    qlink, tmp_path: Path
) -> None:
    qlink("batch", "create", "s1")
    [device_id] = import_ids(qlink, tmp_path, "s1", 1)
    before = qlink("devices", "--json")[1], qlink("audit", "--json")[1]
    for change in ("revoke", "disable", "enable"):
        code, _, err = qlink("device", change, device_id)
        assert code == 1
        assert "the server is not running; start it (qlink server)" in err
        assert "Traceback" not in err
    assert (qlink("devices", "--json")[1], qlink("audit", "--json")[1]) == before


@pytest.mark.parametrize("name", ["[red]x[/red]", "a[/b]", "qlink[puf]"])
def test_an_error_prints_brackets_as_they_are(qlink, name: str) -> None:
    # An error quotes the user's input: rich markup in it must be neither applied nor fatal.
    code, out, err = qlink("batch", "create", name)
    assert code == 1 and out == ""
    assert "is not" in err and repr(name) in err and "Traceback" not in err


def test_token_revoke_of_an_operator_that_never_was_is_an_error(qlink) -> None:
    qlink("tenant", "create", "acme")
    qlink("token", "create", "alice", "--tenant", "acme")
    before = qlink("audit", "--json")[1]
    # No such name; the right name in the default tenant; a tenant that does not exist.
    for args in (("nobody", "--tenant", "acme"), ("alice",), ("alice", "--tenant", "nosuch")):
        code, out, err = qlink("token", "revoke", *args)
        assert code == 1 and out == "", (args, out)
        assert "has no operator" in err and "qlink token list" in err
    assert qlink("audit", "--json")[1] == before  # nothing revoked, nothing recorded
    code, out, _ = qlink("token", "revoke", "alice", "--tenant", "acme", "--json")
    assert code == 0 and json.loads(out)["revoked"] == 1
    code, out, _ = qlink("token", "revoke", "alice", "--tenant", "acme", "--json")
    assert code == 0 and json.loads(out)["revoked"] == 0  # a repeat: already revoked


def test_token_create_remote_refuses_a_tenant_it_would_not_use(qlink, tmp_path: Path) -> None:
    # The server makes a remote token in the logged-in operator's tenant: a --tenant would be
    # silently ignored, so it is refused before anything is asked.
    code, out, err = qlink("token", "create", "x2", "--remote", "--tenant", "acme")
    assert code == 2 and out == "" and "drop --tenant" in err
    assert not (tmp_path / "config" / "login.json").exists()


@pytest.mark.parametrize(
    "command", [("audit",), ("device", "health"), ("device", "commands"), ("devices",)]
)
def test_a_negative_or_huge_limit_is_refused(
    qlink, tmp_path: Path, command: tuple[str, ...]
) -> None:
    qlink("batch", "create", "f1")
    [device_id] = import_ids(qlink, tmp_path, "f1", 1)
    args = (*command, device_id) if command[0] == "device" else command
    code, out, err = qlink(*args, "--limit", "-1")
    assert code == 2 and out == "" and "--limit" in err
    code, out, err = qlink(*args, "--limit", "99999999999999999999")
    assert code == 2 and out == "" and "Traceback" not in err
    assert "a number given is too large" in err


def test_a_path_that_cannot_be_written_is_a_sentence(qlink, tmp_path: Path) -> None:
    qlink("batch", "create", "f1")
    folder = tmp_path / "a folder"
    folder.mkdir()
    a_file = tmp_path / "a file"
    a_file.write_text("x")
    for args, why in (
        (("ca", "root", "--out", str(folder)), "is a folder; give the file to write in it"),
        (("batch", "export", "f1", "--out", str(a_file / "f1.json")), "is a file, not a folder"),
        (("batch", "create", "f2", "--data-dir", str(a_file)), "a file is where a folder"),
    ):
        code, out, err = qlink(*args)
        assert code == 1 and out == "", args
        assert "Traceback" not in err and why in err and str(tmp_path) in err, err
    assert a_file.read_text() == "x" and list(folder.iterdir()) == []


def test_every_out_refuses_a_folder_and_a_missing_folder_and_writes_nothing(
    qlink, tmp_path: Path
) -> None:
    qlink("batch", "create", "f1")
    tree = tmp_path / "tree"
    (tree / "f").mkdir(parents=True)
    (tree / "f" / "app.py").write_text("print('hello')\n")
    folder = tmp_path / "out"
    folder.mkdir()
    commands = (
        ("batch", "export", "f1"),
        ("ca", "root"),
        ("ca", "azure-dps-group", "g1"),
        ("ota", "build", str(tree / "f"), "--version", "1.0.0", "--board", "unix"),
    )
    for command in commands:
        for out, why in (
            (folder, f"--out {folder} is a folder; give the file to write in it"),
            (
                folder / "typo" / "x.out",
                f"the folder {folder / 'typo'} does not exist; create it first",
            ),
        ):
            code, printed, err = qlink(*command, "--out", str(out))
            assert (code, printed) == (1, ""), (command, err)
            assert why in err, (command, err)
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize(
    "command",
    [
        ("revoke",),
        ("disable",),
        ("enable",),
        ("command", "{id}", "ping"),
        ("renew",),
        ("health",),
        ("commands",),
        ("transfer",),
        ("reenrol",),
        ("decommission",),
    ],
)
def test_a_device_argument_that_is_no_device_id_is_a_usage_error(
    qlink, tmp_path: Path, command: tuple[str, ...]
) -> None:
    qlink("batch", "create", "f1")
    before = qlink("audit", "--json")[1]
    for bad in ("ab cd", "a" * 63 + " ", "g" * 64, "a[b]"):
        args = [a.replace("{id}", bad) for a in command]
        if "{id}" not in command:
            args.insert(1, bad)
        code, out, err = qlink("device", *args)
        assert (code, out) == (2, ""), (args, err)
        assert "is not a device ID (64 hex characters)" in " ".join(err.split()), (args, err)
    assert qlink("audit", "--json")[1] == before


def test_an_argument_that_is_not_utf8_is_refused_before_anything_runs(qlink) -> None:
    qlink("batch", "create", "f1")
    before = qlink("audit", "--json")[1]
    bad = b"b\xff".decode(errors="surrogateescape")  # how Python hands over such bytes
    for args in (("batch", "create", bad), ("devices", "--tenant", bad)):
        code, out, err = qlink(*args)
        assert code == 2 and out == ""
        assert "the argument b'b\\xff' is not UTF-8 text" in err and "Traceback" not in err
    assert qlink("audit", "--json")[1] == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--cert-days", "inf"), "cert_validity_days must be a finite number, not inf"),
        (("--cert-days", "nan"), "cert_validity_days must be a finite number, not nan"),
        (("--cert-days", "1e308"), "at most 36525 days"),
        (("--console-lockout-s", "nan"), "console_lockout_s must be a finite number, not nan"),
        (("--hostname", "bad_host!x"), "public_host must be a host name"),
        (("--hostname", "a..b"), "public_host must be a host name"),
        (("--bind", "-x"), "bind_host must be a host name"),
    ],
)
def test_server_refuses_settings_out_of_range_before_it_starts(
    qlink, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    data = tmp_path / "srv"
    code, out, err = qlink("server", "--data-dir", str(data), "--port", "0", *args)
    assert code == 1 and out == "" and message in err and "Traceback" not in err
    assert not data.exists()


@pytest.mark.parametrize(("ttl", "ok"), [("86400", True), ("86401", False), ("0", False)])
def test_the_challenge_ttl_is_a_second_to_a_day(
    qlink, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ttl: str, ok: bool
) -> None:
    started: list[object] = []
    monkeypatch.setattr("host.server.app.serve", started.append)
    data = tmp_path / "srv"
    code, _, err = qlink("server", "--data-dir", str(data), "--challenge-ttl", ttl)
    assert (code == 0, len(started)) == (ok, int(ok)), err
    if not ok:
        assert "challenge TTL must be" in err and "Traceback" not in err


def test_max_challenges_is_still_taken_and_says_it_does_nothing(
    qlink, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    started: list[object] = []
    monkeypatch.setattr("host.server.app.serve", started.append)
    code, _, err = qlink("server", "--data-dir", str(tmp_path / "srv"), "--max-challenges", "8")
    assert code == 0 and len(started) == 1
    assert "--max-challenges has no effect" in err
    assert "--max-challenges" not in qlink("server", "--help")[1]  # hidden


def test_a_bind_address_that_does_not_resolve_is_a_sentence() -> None:
    from host.server import ServerError
    from host.server.app import _listen

    with pytest.raises(ServerError, match=r"cannot listen on 999\.1\.1\.1: .*--bind takes"):
        _listen("999.1.1.1", 0)


def test_a_refused_first_command_leaves_no_qlink_directory_behind(qlink, tmp_path: Path) -> None:
    new = tmp_path / "new"
    code, _, err = qlink("batch", "create", "bx", "--target", "nope", "--data-dir", str(new))
    assert code == 1 and "target 'nope' does not exist" in err
    assert not new.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("mine")
    code, _, err = qlink("token", "create", "op", "--role", "superuser", "--data-dir", str(empty))
    assert code == 1 and "role must be one of" in err
    assert [p.name for p in empty.iterdir()] == ["notes.txt"]
    # The same command that succeeds keeps its store.
    code, _, _ = qlink("batch", "create", "ok", "--data-dir", str(new))
    assert code == 0 and (new / "registry.sqlite").is_file()


@pytest.mark.parametrize(
    ("ca", "url", "token", "message"),
    [
        ("missing", "https://127.0.0.1:1", "qlk_x", "cannot read"),
        ("folder", "https://127.0.0.1:1", "qlk_x", "cannot read"),
        ("der", "https://127.0.0.1:1", "qlk_x", "is not a PEM certificate"),
        ("garbage", "https://127.0.0.1:1", "qlk_x", "is not a PEM certificate"),
        (None, "https://[::1", "qlk_x", "is not valid"),
        (None, "http://127.0.0.1:1", "qlk_x", "must start with https://"),
        (None, "https://127.0.0.1:1", "qlk_é", "the token must be printable ASCII"),
    ],
)
def test_login_with_a_bad_ca_url_or_token_is_a_sentence(
    qlink,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    ca: str | None,
    url: str,
    token: str,
    message: str,
) -> None:
    monkeypatch.setenv("QLINK_CONFIG_DIR", str(tmp_path / "config"))
    paths = {
        "missing": tmp_path / "nope.pem",
        "folder": tmp_path,
        "der": tmp_path / "root.der",
        "garbage": tmp_path / "garbage.pem",
    }
    paths["der"].write_bytes(b"\x30\x82\x01\x00" + bytes(200))
    paths["garbage"].write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    args = ["login", url, "--token", token] + (["--ca", str(paths[ca])] if ca else [])
    code, out, err = qlink(*args)
    assert code == 1 and out == "" and message in err and "Traceback" not in err
    assert not (tmp_path / "config" / "login.json").exists()


@pytest.mark.parametrize(
    "saved",
    [
        "[]",
        "null",
        '"x"',
        '{"url": 5, "token": "t"}',
        '{"url": "https://h", "token": "t", "ca_pem": "garbage"}',
    ],
)
def test_a_damaged_saved_login_is_a_sentence(
    qlink, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, saved: str
) -> None:
    monkeypatch.setenv("QLINK_CONFIG_DIR", str(tmp_path / "config"))
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "login.json").write_text(saved)
    code, out, err = qlink("token", "create", "op9", "--remote")
    assert code == 1 and out == "" and "Traceback" not in err
    assert "login.json is damaged" in err and "run qlink login URL again" in err


def test_a_batch_command_in_a_tenant_that_does_not_exist_names_the_tenant(qlink) -> None:
    qlink("batch", "create", "b1")
    qlink("tenant", "create", "acme")
    for command in (("batch", "export", "b1"), ("batch", "disable", "b1")):
        code, out, err = qlink(*command, "--tenant", "nosuch")
        assert code == 1 and out == ""
        assert "tenant 'nosuch' does not exist; create it first: qlink tenant create nosuch" in err
        code, _, err = qlink(*command, "--tenant", "acme")
        assert code == 1
        assert "batch 'b1' does not exist in tenant 'acme'" in err
        assert "qlink batch create b1 --tenant acme" in err


@pytest.mark.parametrize("command", [("device", "renew"), ("device", "decommission")])
@pytest.mark.parametrize("wait", ["inf", "-1", "99999999"])
def test_a_wait_out_of_range_is_refused_before_anything_is_sent(
    qlink, tmp_path: Path, command: tuple[str, ...], wait: str
) -> None:
    qlink("batch", "create", "f1")
    [device_id] = import_ids(qlink, tmp_path, "f1", 1)
    before = qlink("audit", "--json")[1]
    code, out, err = qlink(*command, device_id, "--wait", wait)
    assert code == 2 and out == "" and "--wait" in err
    assert qlink("audit", "--json")[1] == before


def test_every_run_closes_the_store_it_opened(qlink, tmp_path: Path) -> None:
    # Closed by the run, not left to the garbage collector (a connection is in a reference
    # cycle): the last close folds the WAL into the database file, so between two runs the
    # file is the whole registry, and no run's leftovers change it later.
    gc.disable()
    try:
        for args in (("batch", "create", "f1"), ("batch", "list"), ("devices", "--json")):
            assert qlink(*args)[0] == 0, args
            left = sorted(p.name for p in (tmp_path / "data").glob("registry.sqlite*"))
            assert left == ["registry.sqlite"], args
    finally:
        gc.enable()


def test_out_inside_the_data_directory_is_refused(qlink, tmp_path: Path) -> None:
    qlink("batch", "create", "f1")
    data = tmp_path / "data"
    registry = data / "registry.sqlite"
    before = registry.read_bytes()
    for args in (
        ("batch", "export", "f1", "--out", str(registry)),
        ("ca", "root", "--out", str(data / "ca" / "root.pem")),
        ("ca", "azure-dps-group", "g1", "--out", str(data / "ca" / "issuing.pem")),
    ):
        code, out, err = qlink(*args)
        assert code == 1 and out == "" and "is inside the data directory" in err, args
    assert registry.read_bytes() == before
    assert qlink("devices", "--json")[0] == 0  # the registry still opens


@pytest.mark.parametrize(
    ("kind", "own"),
    [
        ("decommission", "qlink device decommission"),
        ("reenrol", "qlink device reenrol"),
        ("transfer", "qlink device transfer"),
        ("broker", "qlink batch policy"),
        ("ota", "qlink ota rollout create"),
    ],
)
def test_a_raw_command_of_a_kind_with_its_own_use_case_is_refused(
    qlink, tmp_path: Path, kind: str, own: str
) -> None:
    # On its own, a decommission would erase the device without revoking it, a transfer would
    # have no claim behind it: these go through the command that does the rest.
    qlink("batch", "create", "f1")
    [device_id] = import_ids(qlink, tmp_path, "f1", 1)
    set_device(tmp_path, device_id, state="onboarded")
    before = qlink("audit", "--json")[1]
    code, out, err = qlink("device", "command", device_id, kind, "--arg", "epoch=7")
    assert code == 1 and out == ""
    assert f"a {kind} command is sent by {own}" in " ".join(err.split())
    assert qlink("audit", "--json")[1] == before
    assert json.loads(qlink("device", "commands", device_id, "--json")[1]) == []


def test_an_import_larger_than_the_cap_is_refused_unread(
    qlink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import host.cli

    qlink("batch", "create", "f1")
    monkeypatch.setattr(host.cli, "_IMPORT_MAX", 1000)
    big = tmp_path / "big.csv"
    big.write_text((identity_line() + "\n") * 10)  # ~1,960 bytes
    code, out, err = qlink("batch", "import", "f1", str(big))
    assert code == 1 and out == "" and "is larger than an import takes" in err
    assert qlink("devices", "--json")[1].strip() == "[]"
    code, _, err = qlink("batch", "import", "f1", "/dev/zero")  # endless: read only to the cap
    assert code == 1 and "is larger than an import takes" in err


def test_an_import_from_stdin_that_is_not_utf8_says_so(
    qlink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    qlink("batch", "create", "f1")

    class Stdin(io.StringIO):
        buffer = io.BytesIO(b"\xff\xfe,abc\n")

    monkeypatch.setattr(sys, "stdin", Stdin())
    code, out, err = qlink("batch", "import", "f1", "-")
    assert code == 1 and out == "" and "cannot read -: not UTF-8 text" in err


def test_an_import_of_many_bad_rows_lists_the_first_hundred_and_counts_the_rest(
    qlink, tmp_path: Path
) -> None:
    qlink("batch", "create", "f1")
    bad = tmp_path / "bad.csv"
    bad.write_text("".join(f"not-an-id-{i},x\n" for i in range(150)))
    code, out, err = qlink("batch", "import", "f1", str(bad))
    assert code == 1 and out == ""
    listed = [line for line in err.splitlines() if line.startswith(f"{bad}:")]
    assert len(listed) == 100 and listed[0].startswith(f"{bad}:1:")
    assert listed[-1].startswith(f"{bad}:100: ")  # text, not rich's emoji for ":100:"
    assert "... and 50 more bad row(s)" in err and "150 bad row(s)" in err


def test_a_console_capture_reports_the_line_numbers_the_file_has(qlink, tmp_path: Path) -> None:
    # mpremote's captures end lines in CR CR LF: read as text, each became two lines.
    qlink("batch", "create", "f1")
    device_id, pub = identity_line().split(",")
    good = "QDID " + json.dumps({"device_id": device_id, "public_key": pub})
    bad = "QDID " + json.dumps({"device_id": "00", "public_key": pub})
    capture = tmp_path / "capture.txt"
    capture.write_bytes(f">>> import enrol\r\r\n{good}\r\r\n{bad}\r\r\n".encode())
    code, out, err = qlink("batch", "import", "f1", str(capture))
    assert code == 1 and out == ""
    assert f"{capture}:3: device ID must be 64 hex characters" in err
