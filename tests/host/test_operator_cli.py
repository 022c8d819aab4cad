"""`qlink token`, `qlink batch export`, `qlink audit` in-process, and `qlink login` plus a remote
token against a real server."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from cliutil import run_qlink
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hil.serverproc import ServerProcess


def identity_line() -> str:
    pub = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    return f"{hashlib.sha256(pub).hexdigest()},{pub.hex()}"


run = run_qlink


@pytest.fixture
def qlink(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path):
    monkeypatch.setenv("QLINK_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("QLINK_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("COLUMNS", "200")
    return lambda *args: run(monkeypatch, capsys, *args)


def test_token_create_prints_once_and_stores_hash(qlink, tmp_path: Path) -> None:
    qlink("tenant", "create", "acme")
    code, out, err = qlink("token", "create", "alice", "--role", "admin", "--tenant", "acme")
    token = out.strip()
    assert code == 0 and token.startswith("qlk_") and "not shown again" in err
    # The database and its WAL hold the token's hash, never the token.
    db = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("registry.sqlite*"))
    assert token.encode() not in db
    assert hashlib.sha256(token.encode()).hexdigest().encode() in db
    code, out, _ = qlink("token", "list")
    assert "alice" in out and "acme" in out and "admin" in out and token not in out
    assert qlink("token", "revoke", "alice", "--tenant", "acme")[1].startswith("revoked 1")
    assert "revoked" in qlink("token", "list")[1]


def test_token_create_bad_role_is_one_sentence(qlink) -> None:
    code, _, err = qlink("token", "create", "bob", "--role", "root")
    assert code == 1 and "role must be one of viewer, operator, admin" in err


@pytest.mark.parametrize(
    ("args", "kind"),
    [
        (("batch", "create", "--tenant", "acme", "--", ".."), "batch name"),
        (("batch", "create", "f1", "--tenant", ".."), "tenant"),
        (("batch", "create", "f1", "--tenant", "a*", "--policy", "aws"), "tenant"),
        (("batch", "create", "--", "-rf"), "batch name"),
        (("token", "create", "a/b"), "operator name"),
        (("token", "create", "alice", "--tenant", "#"), "tenant"),
        (("token", "create", "alice", "--tenant", "caf\u00e9"), "tenant"),
    ],
    ids=[
        "batch_dotdot",
        "tenant_dotdot",
        "tenant_star",
        "batch_option",
        "token_slash",
        "token_hash",
        "token_accent",
    ],
)
def test_a_bad_new_name_is_one_sentence_and_creates_nothing(
    qlink, tmp_path: Path, args: tuple[str, ...], kind: str
) -> None:
    code, out, err = qlink(*args)
    assert code == 1 and out == ""
    assert f"{kind} must be 1 to 64 characters: letters, digits" in err
    assert not (tmp_path / "data").exists()  # not even the data directory


def test_a_bad_name_leaves_an_existing_store_unchanged(qlink, tmp_path: Path) -> None:
    qlink("tenant", "create", "acme")
    assert qlink("batch", "create", "f1", "--tenant", "acme")[0] == 0
    files = {p: p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file()}
    # Names long enough that the store's binary pages (timestamps, IDs) cannot hold them by
    # chance, as a two-letter name sometimes did.
    assert qlink("batch", "create", "batch-never-made", "--tenant", "..")[0] == 1
    assert qlink("token", "create", "token-never-made*", "--tenant", "acme")[0] == 1
    _, out, _ = qlink("batch", "list", "--json")
    assert [b["name"] for b in json.loads(out)] == ["f1"]
    assert json.loads(qlink("token", "list", "--json")[1]) == []
    audit = [a["action"] for a in json.loads(qlink("audit", "--json")[1])]
    assert audit == ["batch.create", "tenant.create"]
    db = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("registry.sqlite*"))
    assert b"batch-never-made" not in db and b"token-never-made" not in db
    assert set(files) <= {p for p in (tmp_path / "data").rglob("*") if p.is_file()}


def test_export_then_import_json_round_trip(qlink, tmp_path: Path) -> None:
    qlink("tenant", "create", "acme")
    qlink("batch", "create", "f1", "--tenant", "acme")
    csv = tmp_path / "ids.csv"
    lines = [identity_line() for _ in range(3)]
    csv.write_text("\n".join(lines))
    assert qlink("batch", "import", "f1", str(csv))[0] == 0
    backup = tmp_path / "backup.json"
    assert qlink("batch", "export", "f1", "--out", str(backup))[0] == 0
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    doc = json.loads(backup.read_text())
    assert doc["batch"]["tenant"] == "acme"
    assert sorted(d["device_id"] for d in doc["devices"]) == sorted(x.split(",")[0] for x in lines)
    # Restore into a fresh data directory.
    other = tmp_path / "restored"
    qlink("tenant", "create", "acme", "--data-dir", str(other))
    qlink("batch", "create", "f1", "--tenant", "acme", "--data-dir", str(other))
    code, out, _ = qlink("batch", "import", "f1", str(backup), "--data-dir", str(other))
    assert code == 0 and "imported 3" in out
    # Same file again: nothing new, no error.
    code, out, _ = qlink("batch", "import", "f1", str(backup), "--data-dir", str(other))
    assert code == 0 and "imported 0" in out


def test_bad_json_import_names_lines(qlink, tmp_path: Path) -> None:
    qlink("batch", "create", "f1")
    good = identity_line().split(",")
    f = tmp_path / "ids.json"
    f.write_text(
        "[\n"
        + json.dumps({"device_id": good[0], "public_key": good[1]})
        + ",\n"
        + json.dumps({"device_id": good[0], "public_key": "04" + "00" * 64})
        + "\n]"
    )
    code, _, err = qlink("batch", "import", "f1", str(f))
    assert code == 1 and f"{f}:3: public key is not a point on the P-256 curve" in err
    # stderr is no terminal here: no progress bar, so not the blank line its end left.
    assert err.startswith(f"{f}:3: "), err


def test_audit_lists_changes_with_actor(qlink, tmp_path: Path) -> None:
    qlink("tenant", "create", "acme")
    qlink("batch", "create", "f1", "--tenant", "acme")
    qlink("batch", "disable", "f1")
    qlink("token", "create", "carol", "--tenant", "acme")
    code, out, _ = qlink("audit", "--json")
    rows = json.loads(out)
    assert [r["action"] for r in rows] == [
        "token.create",
        "batch.disable",
        "batch.create",
        "tenant.create",
    ]
    assert all(r["actor"].startswith("cli:") and r["source"] == "local" for r in rows)
    assert all(r["tenant"] == "acme" for r in rows)
    code, out, _ = qlink("audit", "--action", "batch.disable")
    assert code == 0 and "batch:f1" in out and "batch.create" not in out


@pytest.mark.e2e
def test_login_and_remote_token_create(qlink, tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "srv") as srv:
        srv.cli("tenant", "create", "acme")
        token = srv.cli("token", "create", "root", "--role", "admin", "--tenant", "acme").stdout
        code, out, err = qlink(
            "login", srv.api_url, "--token", token.strip(), "--ca", str(srv.root_pem_path)
        )
        assert code == 0 and "as root (admin in tenant acme)" in out, err
        saved = tmp_path / "config" / "login.json"
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600
        code, out, err = qlink("token", "create", "dave", "--role", "viewer", "--remote")
        assert code == 0 and out.strip().startswith("qlk_"), err
        assert "viewer in tenant acme" in err
        audit = json.loads(srv.cli("audit", "--json").stdout)
        assert audit[0]["action"] == "token.create" and audit[0]["actor"] == "operator:root"
        code, out, err = qlink(
            "login", srv.api_url, "--token", token.strip(), "--ca", str(srv.root_pem_path), "--json"
        )
        assert code == 0, err
        assert json.loads(out) == {
            "url": srv.api_url,
            "name": "root",
            "role": "admin",
            "tenant": "acme",
            "credentials": str(saved),
        }
        code, _, err = qlink(
            "login", srv.api_url, "--token", "qlk_bad", "--ca", str(srv.root_pem_path)
        )
        assert code == 1 and "unknown or revoked" in err
    assert os.environ.get("QLINK_TOKEN") is None


@pytest.mark.e2e
def test_device_changes_report_json(tmp_path: Path) -> None:
    ids = tmp_path / "ids.csv"
    ids.write_text(identity_line() + "\n")
    device_id = ids.read_text().split(",")[0]
    with ServerProcess(tmp_path / "srv") as srv:
        srv.cli("batch", "create", "f1")
        srv.cli("batch", "import", "f1", str(ids))
        for change, state, disabled in (
            ("disable", "registered", True),
            ("enable", "registered", False),
            ("revoke", "revoked", False),
        ):
            done = srv.cli("device", change, device_id, "--json")
            doc = json.loads(done.stdout)
            assert (doc["device_id"], doc["state"], doc["disabled"]) == (device_id, state, disabled)
        again = srv.cli("device", "enable", device_id, "--json", check=False)
        assert again.returncode == 1 and again.stdout == "" and "stays revoked" in again.stderr
