"""The rig's many-device MQTT fleet (hil/mqttfleet.py): its MQTT framing and its command checks
against the rules they come from, then a few devices against the real server and broker: they
come online, their telemetry reaches the store, a ping and a renewal go round, and a revoked
device's dropped connection is seen and stays refused."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hil.commandcheck import COMMAND_EKU, COMMAND_LABEL, check_command, signer_key
from hil.fleet import Fleet
from hil.mqttfleet import DeviceSpec, FleetProcess
from hil.mqttwire import MqttProtocolError, PacketReader, encode_length, publish_packet
from hil.serverproc import ServerProcess

DEVICE = "ab" * 32
NOW = 1_800_000_000.0


# -- MQTT framing (MQTT 3.1.1) ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "encoded"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_remaining_length_takes_one_to_four_bytes(n: int, encoded: bytes) -> None:
    # 2.2.3, table 2.4: the boundaries of each length of the encoding.
    assert encode_length(n) == encoded


@pytest.mark.parametrize("n", [-1, 268_435_456])
def test_remaining_length_out_of_range_is_refused(n: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        encode_length(n)


def test_packets_split_across_reads_come_out_whole() -> None:
    first = publish_packet("qlink/t/d/cmd", b"x" * 200, qos=1, packet_id=7)
    second = b"\xd0\x00"  # PINGRESP
    reader = PacketReader()
    out = [p for byte in first + second for p in reader.feed(bytes([byte]))]
    assert out == [(first[0], first[3:]), (0xD0, b"")]


def test_a_remaining_length_of_five_bytes_is_refused() -> None:
    with pytest.raises(MqttProtocolError, match="four bytes"):
        list(PacketReader().feed(b"\x30\xff\xff\xff\xff\x01"))


# -- the device's command checks (docs/protocol.md "Command channel") ----------------------
def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    eku: x509.ObjectIdentifier | None,
) -> x509.Certificate:
    issuer_name, issuer_key = issuer or (subject, key)
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
    )
    if eku is not None:
        b = b.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


class Signer:
    def __init__(self) -> None:
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = _cert("root", self.root_key, None, None)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = _cert("signer", self.key, ("root", self.root_key), COMMAND_EKU)

    def payload(self, **changes: Any) -> bytes:
        """A signed ping for DEVICE, seq 5, expiring 60 s after NOW; a change of None drops
        that member."""
        doc = {"v": 1, "device_id": DEVICE, "seq": 5, "exp": int(NOW) + 60, "kind": "ping"}
        doc = {**doc, "args": {}, **changes}
        return self.sign(json.dumps({k: v for k, v in doc.items() if v is not None}).encode())

    def sign(self, body: bytes) -> bytes:
        der = self.key.sign(COMMAND_LABEL + body, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big") + body


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


def _key(signer: Signer) -> ec.EllipticCurvePublicKey:
    key = signer_key(_der(signer.cert), _der(signer.root))
    assert key is not None
    return key


def test_a_command_signed_for_this_device_is_accepted(signer: Signer) -> None:
    v = check_command(signer.payload(), _key(signer), DEVICE, 4, NOW)
    assert (v.reason, v.seq) == (None, 5)
    assert v.body is not None and v.body["kind"] == "ping"


@pytest.mark.parametrize(
    ("change", "last_seq", "now", "reason", "seq"),
    [
        ({"device_id": "cd" * 32}, 4, NOW, "foreign", 5),
        ({}, 4, NOW + 60, "expired", 5),  # exp must be in the future: equal is not
        ({}, 5, NOW, "replayed", 5),  # seq must be above the last accepted
        # Each rule runs on its member when it is there, before the shape is judged.
        ({"device_id": "cd" * 32, "kind": 7}, 4, NOW, "foreign", 5),
        ({"seq": 3, "args": None}, 4, NOW, "replayed", 3),
        # The shape, last: a member missing or of the wrong type, v not 1, over 320 bytes.
        ({"args": None}, 4, NOW, "malformed", 5),
        ({"exp": "soon"}, 4, NOW, "malformed", 5),
        ({"seq": True}, 4, NOW, "malformed", None),
        ({"v": 2}, 4, NOW, "malformed", 5),
        ({"args": {"pad": "x" * 240}}, 4, NOW, "malformed", 5),
    ],
    ids=[
        "foreign",
        "expired_at_exp",
        "replayed_same_seq",
        "foreign_before_shape",
        "replayed_before_shape",
        "args_missing",
        "exp_not_int",
        "seq_bool",
        "v_not_1",
        "body_over_320_bytes",
    ],
)
def test_a_command_breaking_a_rule_is_refused_with_its_reason(
    signer: Signer,
    change: dict[str, Any],
    last_seq: int,
    now: float,
    reason: str,
    seq: int | None,
) -> None:
    v = check_command(signer.payload(**change), _key(signer), DEVICE, last_seq, now)
    assert (v.body, v.reason, v.seq) == (None, reason, seq)


def test_a_body_of_320_bytes_is_accepted(signer: Signer) -> None:
    base = len(signer.payload(args={"pad": ""})) - 64
    payload = signer.payload(args={"pad": "x" * (320 - base)})
    assert len(payload) - 64 == 320
    assert check_command(payload, _key(signer), DEVICE, 4, NOW).reason is None


def test_an_altered_command_is_refused_before_its_body_is_read(signer: Signer) -> None:
    good = signer.payload()
    altered = good.replace(b'"seq": 5', b'"seq": 6')  # another body under the same signature
    assert altered != good
    v = check_command(altered, _key(signer), DEVICE, 0, NOW)
    assert (v.reason, v.seq) == ("altered", None)  # nothing of an unsigned body is believed
    assert check_command(good[:63], _key(signer), DEVICE, 0, NOW).reason == "altered"
    for body in (b"not json", b"[5]"):
        v = check_command(signer.sign(body), _key(signer), DEVICE, 0, NOW)
        assert (v.reason, v.seq) == ("malformed", None)


def test_without_a_usable_signer_every_command_is_refused(signer: Signer) -> None:
    assert check_command(signer.payload(), None, DEVICE, 0, NOW).reason == "no_signer"
    other_root_key = ec.generate_private_key(ec.SECP256R1())
    stranger = _cert("signer", signer.key, ("root", other_root_key), COMMAND_EKU)
    tls_key = _cert(
        "signer", signer.key, ("root", signer.root_key), ExtendedKeyUsageOID.SERVER_AUTH
    )
    no_eku = _cert("signer", signer.key, ("root", signer.root_key), None)
    root = _der(signer.root)
    assert signer_key(_der(stranger), root) is None  # not issued by the pinned root
    assert signer_key(_der(tls_key), root) is None  # another purpose
    assert signer_key(_der(no_eku), root) is None
    assert signer_key(b"\x30\x03junk", root) is None


# -- against the real server and broker -------------------------------------------------------
_SIZE = 4


@dataclass
class Held:
    proc: FleetProcess
    connected: dict[str, Any]  # the fleet's connect report
    ids: list[str]


@pytest.fixture(scope="module")
def held(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Held]:
    """_SIZE devices onboarded through the server, then connected from a process of their own."""
    fleet = Fleet(server, batch="mqttfleet", size=_SIZE)
    devices = [fleet.take() for _ in range(_SIZE)]
    answers = [d.onboard() for d in devices]
    assert [a.status for a in answers] == [200] * _SIZE
    proc = FleetProcess(
        [DeviceSpec.of(d, a) for d, a in zip(devices, answers, strict=True)],
        Path(tmp_path_factory.mktemp("mqttfleet")),
    ).start()
    try:
        yield Held(proc, proc.call("connect"), proc.call("ids"))
    finally:
        proc.stop()


def _until(what: str, check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Return once `check()` holds (polled: the store has no change feed)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout_s} s")
        time.sleep(0.05)


@pytest.mark.e2e
def test_devices_come_online_and_their_telemetry_is_stored(
    server: ServerProcess, held: Held
) -> None:
    assert (held.connected["online"], held.connected["failed"]) == (_SIZE, {})
    marks = ",".join(f"'{i}'" for i in held.ids)
    query = (
        f"SELECT last_telemetry FROM devices WHERE device_id IN ({marks})"
        " AND last_telemetry IS NOT NULL"
    )
    held.proc.call("start_telemetry", 0.2)
    try:
        _until("telemetry of every device", lambda: len(server.query(query)) == _SIZE)
    finally:
        held.proc.call("stop_telemetry")
    stored = [json.loads(r[0]) for r in server.query(query)]
    assert all(t["seq"] >= 1 and t["fw"] == "sim-1.0.0" for t in stored)
    assert all(set(t["puf"]) == {"margin", "corrected_bits", "health_failures"} for t in stored)


@pytest.mark.e2e
def test_a_ping_and_a_renewal_go_round_through_the_cli(server: ServerProcess, held: Held) -> None:
    first, second = held.ids[:2]
    out = server.cli("device", "command", first, "ping", "--wait", "10")
    assert out.stdout.strip().endswith("ping: done")
    [record] = held.proc.call("commands", [first])[first]
    assert (record["kind"], record["status"]) == ("ping", "done")

    before = held.proc.call("stats")["renewals"]
    out = server.cli("device", "renew", second, "--wait", "20")
    assert out.stdout.strip().endswith("renew: done")
    after = held.proc.call("stats")
    assert after["renewals"] == before + 1
    assert after["online"] == _SIZE - after["drops"]  # back, with its new certificate


@pytest.mark.e2e
def test_a_revoked_device_is_seen_dropped_and_stays_refused(
    server: ServerProcess, held: Held
) -> None:
    doomed = held.ids[-1]
    t0 = time.monotonic()
    server.cli("device", "revoke", doomed)
    at = held.proc.call("wait_dropped", [doomed], 5.0)[doomed]
    assert at is not None and at > t0
    assert set(held.proc.call("dropped")) == {doomed}  # no other device lost its connection
    outcome = held.proc.call("try_connect", [doomed])[doomed]
    assert outcome in ("tls_refused", "reset", "closed", "subscribe_refused")
