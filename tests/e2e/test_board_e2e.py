"""Emulated boards running the real firmware (MicroPython Unix port, silicon model) against the
real server, CA and Mosquitto: onboarding over TLS, telemetry over mutual TLS, and the refusals
that must hold end to end."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hil.emulated import BoardError, EmulatedBoard
from hil.serverproc import ServerProcess

pytestmark = pytest.mark.e2e

# DER prefix of an RFC 5915 ECPrivateKey with a 32-byte key: SEQUENCE, INTEGER 1, OCTET STRING 32.
_SEC1_PREFIX = bytes.fromhex("30770201010420")


# Columns that every session changes: live telemetry, and the PUF health each session reports.
# What a session of the board changes by itself: telemetry, PUF health, presence (the broker's
# report of the power cut, then the board's online event) and the console's change stamp.
_LIVE_COLUMNS = {
    "last_seen",
    "last_telemetry",
    "puf_margin_max",
    "puf_used_pct",
    "online",
    "fw",
    "changed_at",
}


def _dump(server: ServerProcess) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of devices and batches, less the live telemetry columns."""
    import sqlite3

    with sqlite3.connect(server.data_dir / "registry.sqlite") as db:
        dump = {}
        for table in ("devices", "batches"):
            cols = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
            keep = ", ".join(c for c in cols if c not in _LIVE_COLUMNS)
            dump[table] = db.execute(f"SELECT {keep} FROM {table} ORDER BY 1").fetchall()
        return dump


def _device_row(server: ServerProcess, device_id: str) -> dict[str, Any] | None:
    rows = json.loads(server.cli("devices", "--json").stdout)
    return next((r for r in rows if r["device_id"] == device_id), None)


def _wait_seq(
    server: ServerProcess, device_id: str, seq: int, *, at_least: bool = False, timeout: float = 30
) -> dict[str, Any]:
    """Wait until the registry's last telemetry of `device_id` has sequence number `seq`
    (or a later one, with `at_least`)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        row = _device_row(server, device_id)
        got = (row or {}).get("last_telemetry") or {}
        if got.get("seq") == seq or (at_least and got.get("seq", 0) >= seq):
            assert row is not None
            return row
        assert time.monotonic() < deadline, f"registry never showed seq {seq}: {row}"
        time.sleep(0.2)


class Boards:
    def __init__(self, root: Path, server: ServerProcess) -> None:
        self.root = root
        self.server = server
        self.made: list[EmulatedBoard] = []

    def new(
        self, name: str, *, register: bool = True, root_der: bytes | None = None
    ) -> tuple[EmulatedBoard, dict[str, str]]:
        board = EmulatedBoard(self.root, name)
        self.made.append(board)
        board.flash(
            {"server": self.server.api_url, "root_ca": "ca.der", "telemetry_interval_ms": 300},
            root_der if root_der is not None else self.server.root_der(),
        )
        ident = board.enrol()
        if register:
            csv = self.root / f"{name}.csv"
            csv.write_text(f"{ident['device_id']},{ident['public_key']}\n")
            self.server.cli("batch", "import", "boards", str(csv))
        return board, ident

    def stop(self) -> None:
        for b in self.made:
            b.power_off()


@pytest.fixture(scope="module")
def boards(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Boards]:
    server.cli("batch", "create", "boards")
    b = Boards(tmp_path_factory.mktemp("boards"), server)
    yield b
    b.stop()


@pytest.fixture(scope="module")
def onboarded(boards: Boards) -> tuple[EmulatedBoard, dict[str, str]]:
    board, ident = boards.new("alpha")
    board.power_on()
    board.wait_for(r"published seq=3\b", timeout=120)
    return board, ident


def test_board_onboards_over_tls_and_its_telemetry_reaches_the_registry(
    server: ServerProcess, onboarded: tuple[EmulatedBoard, dict[str, str]]
) -> None:
    board, ident = onboarded
    # The device ID is SHA-256 of the uncompressed public key.
    pub = bytes.fromhex(ident["public_key"])
    digest = hashes.Hash(hashes.SHA256())
    digest.update(pub)
    assert ident["device_id"] == digest.finalize().hex()
    # The certificate the board stored was issued for its ID and key, by our CA.
    cert = x509.load_der_x509_certificate((board.fs / "data" / "cert.der").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == ident["device_id"]
    assert (
        cert.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        == pub
    )
    # Telemetry went device -> Mosquitto (mTLS) -> server subscriber -> registry.
    row = _wait_seq(server, ident["device_id"], 3, at_least=True)
    assert row["state"] == "onboarded"


def test_no_private_key_or_seed_is_ever_written_on_the_board(
    onboarded: tuple[EmulatedBoard, dict[str, str]],
) -> None:
    board, _ = onboarded
    for path in board.files():
        data = path.read_bytes()
        assert _SEC1_PREFIX not in data, f"{path} holds an EC private key"
        assert b"PRIVATE KEY" not in data, f"{path} holds a PEM private key"


def test_identity_and_registration_survive_a_power_cycle(
    server: ServerProcess, onboarded: tuple[EmulatedBoard, dict[str, str]]
) -> None:
    board, ident = onboarded
    before = _dump(server)
    board.power_cycle()
    m = board.wait_for(r"I agent: device ([0-9a-f]{64})", timeout=60)
    assert m.group(1) == ident["device_id"]
    board.wait_for(r"published seq=1\b", timeout=60)
    # Reconnecting with the stored certificate needs no new onboarding: no row changed state.
    after = _dump(server)
    assert after == before
    assert not any(" onboard: hello" in ln for ln in board.lines())


def test_unregistered_board_gets_no_challenge_and_logs_why(
    server: ServerProcess, boards: Boards
) -> None:
    before = _dump(server)
    board, ident = boards.new("stranger", register=False)
    board.power_on()
    board.wait_for(r"not_registered", timeout=60)
    board.power_off()
    assert _dump(server) == before
    assert _device_row(server, ident["device_id"]) is None
    assert not (board.fs / "data" / "cert.der").exists()


def _other_root_der() -> bytes:
    import datetime

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "someone else's root")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def test_board_pinned_to_another_root_refuses_the_server(
    server: ServerProcess, boards: Boards
) -> None:
    board, ident = boards.new("pinned-elsewhere", root_der=_other_root_der())
    before = _dump(server)
    board.power_on()
    m = board.wait_for(r"W agent: link failed \(1 in a row\): (.*)", timeout=60)
    assert re.search(r"tls|TLS|certificate|verify", m.group(1)), m.group(0)
    board.power_off()
    # The server never saw a hello from it (the TLS handshake failed first) and nothing changed.
    assert _dump(server) == before
    row = _device_row(server, ident["device_id"])
    assert row is not None and row["state"] == "registered"
    assert not (board.fs / "data" / "cert.der").exists()
    assert ident["device_id"] not in server.log_path.read_text()


_CROSS_PUBLISH = """
import json
import board
from qdid import identity
from agent import store, tlslink
from agent.mqtt import MQTTClient
ident = identity.boot(board.make(), "data")
st = store.load("data", ident.device_id, ident.public_key)
sock, _ = tlslink.connect(st.broker_host, st.broker_port, st.broker_ca, 10000,
                          st.cert_der, ident.private_key_der())
c = MQTTClient(ident.device_id, 60, 10000)
c.connect(sock)
forged = {"seq": 999999, "uptime_ms": 1, "mem_free": 1, "fw": "forged"}
c.publish(%(victim_topic)r, json.dumps(forged).encode(), 1)
# Then a marker on its own topic: the broker relays one client's messages in order, so once the
# server has the marker, a forged message that got through would be stored already.
marker = {"seq": 424242, "uptime_ms": 1, "mem_free": 1, "fw": "marker"}
c.publish(st.topics["telemetry"], json.dumps(marker).encode(), 1)
print("CROSS-PUBLISH DONE")
c.disconnect()
"""


def test_device_cannot_publish_on_another_devices_topic(
    server: ServerProcess,
    boards: Boards,
    onboarded: tuple[EmulatedBoard, dict[str, str]],
) -> None:
    victim, victim_ident = onboarded
    victim.power_off()  # its last telemetry is now fixed; a forged message would replace it
    last_seq = max(int(m) for m in re.findall(r"published seq=(\d+)", "\n".join(victim.lines())))
    row = _wait_seq(server, victim_ident["device_id"], last_seq)
    victim_last = row["last_telemetry"]
    victim_topic = json.loads((victim.fs / "data" / "onboard.json").read_text())["topics"][
        "telemetry"
    ]

    attacker, attacker_ident = boards.new("attacker")
    attacker.power_on()
    attacker.wait_for(r"published seq=1\b", timeout=120)
    attacker.power_off()
    out = attacker.run_script(_CROSS_PUBLISH % {"victim_topic": victim_topic})
    assert "CROSS-PUBLISH DONE" in out
    # The broker accepted the connection and the attacker's own traffic still flows...
    _wait_seq(server, attacker_ident["device_id"], 424242)
    # ...but the forged telemetry never reached the victim's record.
    row = _device_row(server, victim_ident["device_id"])
    assert row is not None and row["last_telemetry"] == victim_last
    assert (row["last_telemetry"] or {}).get("seq") != 999999


def test_board_error_carries_the_console_tail(boards: Boards) -> None:
    board, _ = boards.new("quiet", register=False)
    board.power_on()
    with pytest.raises(BoardError, match="Console tail"):
        board.wait_for(r"this line never appears", timeout=1)
    board.power_off()
