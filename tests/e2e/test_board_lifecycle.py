"""Certificate renewal on emulated boards running the real firmware against a real server whose
certificates live one minute: renewal by the clock at a share of the life, renewal on command,
and a board whose certificate expired while it was off recovering by itself through its proof.
The replaced serial is revoked each time and telemetry goes on in order."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from hil import scenarios
from hil.emulated import EmulatedBoard
from hil.serverproc import ServerProcess

pytestmark = pytest.mark.e2e

VALIDITY_S = 60  # the CA's floor (host/server/ca.py MIN_VALIDITY_S)
RENEW_AT_PCT = 50


class Life:
    def __init__(self, server: ServerProcess, root: Path) -> None:
        self.server, self.root = server, root
        self.boards: list[EmulatedBoard] = []

    def board(self, name: str) -> tuple[EmulatedBoard, str]:
        b, ident = scenarios.registered_board(self.root, self.server, name, "life")
        self.boards.append(b)
        return b, ident["device_id"]

    def device(self, device_id: str) -> dict[str, Any]:
        rows = json.loads(self.server.cli("devices", "--json").stdout)
        return next(r for r in rows if r["device_id"] == device_id)

    def revoked(self) -> set[int]:
        der = (self.server.data_dir / "ca" / "crl.der").read_bytes()
        return {r.serial_number for r in x509.load_der_x509_crl(der)}


@pytest.fixture(scope="module")
def life(make_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Life]:
    days = repr(VALIDITY_S / 86400)
    server = make_server(
        tmp_path_factory.mktemp("qlink-life"),
        extra_args=["--cert-days", days, "--renewal-days", "0", "--renew-at", str(RENEW_AT_PCT)],
    ).start()
    server.cli("batch", "create", "life")
    lf = Life(server, tmp_path_factory.mktemp("life-boards"))
    yield lf
    for b in lf.boards:
        b.power_off()
    assert server.stop() in (0, -15), server.log_tail()


@pytest.fixture(scope="module")
def sleeper(life: Life) -> tuple[EmulatedBoard, str, dict[str, Any]]:
    """A board that onboards, then is switched off until its certificate has expired."""
    board, device_id = life.board("sleeper")
    board.power_on()
    board.wait_for(r"published seq=1\b", timeout=120)
    board.power_off()
    return board, device_id, life.device(device_id)


def test_a_board_renews_by_the_clock_and_on_command(
    life: Life, sleeper: tuple[EmulatedBoard, str, dict[str, Any]]
) -> None:
    board, device_id = life.board("renewer")
    board.power_on()
    board.wait_for(r"published seq=1\b", timeout=120)
    first = life.device(device_id)
    # By the clock: past half of a one-minute life the board renews by itself.
    board.wait_for(r"I agent: renewed certificate", timeout=VALIDITY_S)
    second = life.device(device_id)
    assert second["serial"] != first["serial"]
    assert int(first["serial"], 16) in life.revoked()
    # On command, long before the next renewal point.
    out = life.server.cli("device", "renew", device_id, "--wait", "60", "--json")
    assert json.loads(out.stdout)["state"] == "done"
    third = life.device(device_id)
    assert third["serial"] not in (first["serial"], second["serial"])
    assert int(second["serial"], 16) in life.revoked()
    # Telemetry went on across both renewals, in order, nothing lost in the queue.
    seen = int(third["last_telemetry"]["seq"])
    board.wait_for(rf"published seq={seen + 3}\b", timeout=30)
    seqs = [int(m) for m in _published(board)]
    assert seqs == list(range(1, len(seqs) + 1))


def _published(board: EmulatedBoard) -> list[str]:
    import re

    return [m.group(1) for ln in board.lines() if (m := re.search(r"published seq=(\d+)", ln))]


def test_a_board_whose_certificate_expired_while_off_recovers_by_itself(
    life: Life, sleeper: tuple[EmulatedBoard, str, dict[str, Any]]
) -> None:
    board, device_id, before = sleeper
    left = before["not_after"] - time.time() + 1
    if left > 0:
        time.sleep(left)  # no event to await: the certificate's end is wall-clock time
    board.power_on()
    board.wait_for(r"W agent: certificate expired at \d+; onboarding again", timeout=60)
    board.wait_for(r"published seq=1\b", timeout=120)
    after = life.device(device_id)
    assert after["serial"] != before["serial"] and after["not_after"] > time.time()
    # Replaced, so recorded as revoked; the CRL itself leaves out what has expired anyway
    # (RFC 5280 3.3), and the TLS handshake refuses an expired certificate.
    assert (before["serial"],) in life.server.query("SELECT serial FROM revoked_certs")
    assert not any("link failed" in ln for ln in board.lines())


def test_a_board_runs_a_signed_command_and_refuses_forged_ones(life: Life) -> None:
    """A broker that is not trusted (AWS IoT, a customer's cluster) can inject anything on a
    device's `cmd` topic; the board runs only what the command signer signed for it, once."""
    from host.server.ca import CertificateAuthority
    from host.server.commands import CommandSigner, body
    from host.server.mqtt import connect_admin

    board, device_id = life.board("commander")
    board.power_on()
    board.wait_for(r"published seq=1\b", timeout=120)
    out = life.server.cli("device", "command", device_id, "ping", "--wait", "30", "--json")
    sent = json.loads(out.stdout)
    assert sent["state"] == "done"
    board.wait_for(rf"I command: seq={sent['seq']} done", timeout=5)

    ca = CertificateAuthority.load(life.server.data_dir / "ca")
    signer = CommandSigner.load_or_create(ca)
    topic = f"qlink/default/{device_id}/cmd"
    admin = connect_admin(ca, "127.0.0.1", int(life.server.info["broker_admin_port"]), "forger")
    exp = int(time.time()) + 600
    good = signer.sign(body(device_id, sent["seq"] + 1, exp, "ping", {}))
    forged = {
        "replayed": signer.sign(body(device_id, sent["seq"], exp, "ping", {})),
        "altered": good.replace(b'"ping"', b'"renew"'),  # changed after signing
        "foreign": signer.sign(body("ab" * 32, sent["seq"] + 1, exp, "ping", {})),
        "expired": signer.sign(body(device_id, sent["seq"] + 1, int(time.time()) - 5, "ping", {})),
    }
    try:
        for reason, payload in forged.items():
            admin.publish(topic, payload, qos=1).wait_for_publish(5)
            board.wait_for(rf"W command: seq=\S+ rejected: {reason}", timeout=10)
        # None of them ran or moved the device's sequence: the next genuine one still does.
        admin.publish(topic, good, qos=1).wait_for_publish(5)
        board.wait_for(rf"I command: seq={sent['seq'] + 1} done", timeout=10)
    finally:
        admin.loop_stop()
        admin.disconnect()
