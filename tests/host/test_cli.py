"""The `qlink` command in-process: output, exit codes, errors as one sentence without a trace."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from host.cli import main


def run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["qlink", *args])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


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
    for command in ("server", "batch", "devices", "ca"):
        assert command in out


def test_server_help_names_its_options(qlink) -> None:
    code, out, _ = qlink("server", "--help")
    assert code == 0
    for option in ("--data-dir", "--port", "--broker-port", "--hostname", "--challenge-ttl"):
        assert option in out


def test_batch_create_and_list(qlink) -> None:
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
    proc = subprocess.run(
        [sys.executable, "-m", "host.cli", "batch", "list", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "batch" in proc.stdout
