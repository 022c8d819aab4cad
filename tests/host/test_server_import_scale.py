"""Import at fleet scale: 10,000 identities from CSV and from JSON in under 5 s each, through
the CLI (with its progress bar) and all-or-nothing even at that size."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from host.cli import main
from host.server.store import ImportRejected, Store

N = 10_000


@pytest.fixture(scope="module")
def fleet() -> list[tuple[str, str]]:
    out = []
    for _ in range(N):
        pub = (
            ec.generate_private_key(ec.SECP256R1())
            .public_key()
            .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        )
        out.append((hashlib.sha256(pub).hexdigest(), pub.hex()))
    return out


def qlink(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["qlink", *args])
    try:
        main()
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_ten_thousand_identities_import_in_under_5_s(
    fleet: list[tuple[str, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fmt: str,
) -> None:
    data = tmp_path / "data"
    if fmt == "csv":
        text = "\n".join(f"{i},{k}" for i, k in fleet) + "\n"
    else:
        text = json.dumps([{"device_id": i, "public_key": k} for i, k in fleet], indent=1)
    f = tmp_path / f"fleet.{fmt}"
    f.write_text(text)
    assert qlink(monkeypatch, "batch", "create", "big", "--data-dir", str(data)) == 0
    t = time.perf_counter()
    code = qlink(monkeypatch, "batch", "import", "big", str(f), "--data-dir", str(data))
    elapsed = time.perf_counter() - t
    out = capsys.readouterr().out
    assert code == 0 and f"imported {N} device(s)" in out
    assert elapsed < 5.0, f"{N} identities took {elapsed:.2f} s"
    reg = Store(data / "registry.sqlite")
    assert reg.batches.get("big").devices == N
    reg.close()


def test_one_bad_row_in_ten_thousand_stores_nothing(
    fleet: list[tuple[str, str]], tmp_path: Path
) -> None:
    reg = Store(tmp_path / "r.sqlite")
    reg.batches.create("big")
    lines = [f"{i},{k}" for i, k in fleet]
    lines[7777] = lines[7777][:-2] + "zz"
    with pytest.raises(ImportRejected) as info:
        reg.batches.import_devices("big", lines)
    assert [(e.line, e.reason) for e in info.value.errors] == [
        (7778, "public key must be 130 hex characters")
    ]
    assert reg.batches.get("big").devices == 0
    reg.close()
