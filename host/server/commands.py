"""The command channel's server side (docs/protocol.md "Command channel"): the command signer's
key and certificate, the signed payload, and what devices say back on their event topic.

The signer key is not a TLS key: it is certified by the platform root itself for one purpose
(the extended key usage `COMMAND_EKU`), so a device checks a command with the one key it pins,
and a broker qlink does not run (AWS IoT, a customer's cluster) can carry commands without being
trusted with them. Its files, `ca/command.pem` and `ca/command.key` (0600), are made on first
use and renewed when they near their end or the root changes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from host.server import ServerError, jsonin
from host.server.ca import CertificateAuthority
from host.server.purposekey import file_key
from host.server.schemas import STATE_ONBOARDED, STATE_REVOKED, DeviceRecord

# "qlink command signing": a UUID-based OID (ITU-T X.667, arc 2.25), so no registry is needed.
COMMAND_EKU = x509.ObjectIdentifier("2.25.311889229853575044542618327131203868764")
LABEL = b"qlink-cmd-v1\x00"  # domain separation: this signature means nothing elsewhere
MAX_BODY = 320  # bytes; the device's MQTT receive buffer holds topic + signature + this
KINDS = ("ping", "renew", "transfer", "reenrol", "decommission", "broker", "ota")
# The batch policies whose devices a command reaches: a Mosquitto target's (the managed one,
# an external one); AWS IoT's and the Azure export's are not reached yet.
COMMAND_POLICIES = ("mosquitto", "external")
_MAX_EVENT = 1024  # bytes; a device's event messages are far shorter
_SUBJECT = "qlink command signer"


class CommandError(ServerError):
    """A command that cannot be signed or sent as asked."""


def unreachable(dev: DeviceRecord) -> str | None:
    """Why no command can reach the device (to end "...; a command cannot reach it"), or None."""
    if dev.state == STATE_REVOKED:
        return "is revoked"
    if dev.disabled:
        return "is disabled"
    if dev.state != STATE_ONBOARDED:
        return "has not onboarded yet"
    if dev.policy not in COMMAND_POLICIES:
        return (
            f"is in a {dev.policy!r} batch; commands reach devices of Mosquitto targets only "
            "(the managed broker, policy mosquitto, or an external one, policy external)"
        )
    return None


def body(device_id: str, seq: int, expires: int, kind: str, args: dict[str, Any]) -> bytes:
    """The signed body: compact JSON with its members in the documented order."""
    doc = {"v": 1, "device_id": device_id, "seq": seq, "exp": expires, "kind": kind, "args": args}
    out = json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode()
    if len(out) > MAX_BODY:
        raise CommandError(
            f"the command's arguments are too long ({len(out)} bytes signed, at most {MAX_BODY})"
        )
    return out


def digest_input(body_bytes: bytes) -> bytes:
    return LABEL + body_bytes


@dataclass(frozen=True)
class CommandSigner:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    def sign(self, body_bytes: bytes) -> bytes:
        """The MQTT payload: r || s (32 bytes each, big-endian) then the body."""
        der = self.key.sign(digest_input(body_bytes), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big") + body_bytes

    @classmethod
    def load_or_create(cls, ca: CertificateAuthority) -> CommandSigner:
        # Devices learn the signer's key at onboarding and renewal only: a certificate near its
        # end is renewed over the same key (host/server/purposekey.py), or every command would
        # be refused until then.
        cert, key = file_key(ca, "command", _SUBJECT, COMMAND_EKU)
        return cls(cert, key)


# -- what devices say on their event topic ----------------------------------------------------
@dataclass(frozen=True)
class Ack:
    """`{"event": "command", "seq": N, "status": "accepted|done|failed", "reason": ...}`."""

    seq: int
    status: str
    reason: str | None


@dataclass(frozen=True)
class Rejected:
    """`{"event": "command_rejected", "seq": N|null, "reason": ...}`."""

    seq: int | None
    reason: str


@dataclass(frozen=True)
class Online:
    """`{"event": "online", "fw": ..., "cmd_seq": N, "puf": {...}}`."""

    cmd_seq: int
    fw: str | None
    puf: dict[str, int]


Event = Ack | Rejected | Online
_STATUSES = ("accepted", "done", "failed")


def _uint(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31 else None


def _text(v: object, limit: int = 80) -> str | None:
    return v[:limit] if isinstance(v, str) else None


def parse_event(payload: bytes | bytearray) -> Event | dict[str, Any] | None:
    """A command acknowledgement, a rejection or an online event; another valid event object
    as it is (e.g. `reconnected`); None for anything malformed."""
    if len(payload) > _MAX_EVENT:
        return None
    try:
        doc = jsonin.loads(payload)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("event"), str):
        return None
    kind = doc["event"]
    if kind == "command":
        seq, status = _uint(doc.get("seq")), doc.get("status")
        if seq is None or status not in _STATUSES:
            return None
        return Ack(seq, str(status), _text(doc.get("reason")))
    if kind == "command_rejected":
        reason = _text(doc.get("reason"))
        seq = doc.get("seq")
        if reason is None or (seq is not None and _uint(seq) is None):
            return None
        return Rejected(_uint(seq), reason)
    if kind == "online":
        cmd_seq = _uint(doc.get("cmd_seq"))
        if cmd_seq is None:
            return None
        raw = doc.get("puf")
        puf = {}
        if isinstance(raw, dict):
            puf = {str(k)[:32]: v for k, v in raw.items() if _uint(v) is not None}
        return Online(cmd_seq, _text(doc.get("fw"), 32), puf)
    return doc
