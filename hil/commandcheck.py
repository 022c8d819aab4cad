"""The command channel as a device checks it (docs/protocol.md "Command channel"): the signer's
certificate against the pinned root and its one purpose, then each command's signature, members,
device ID, expiry and sequence number, in the page's order. Written from the page alone (it
shares no code with the server that signs), so it tests the server's commands as a device would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

# docs/protocol.md "Command channel": the signer's purpose and the domain label of its signature.
COMMAND_EKU = x509.ObjectIdentifier("2.25.311889229853575044542618327131203868764")
COMMAND_LABEL = b"qlink-cmd-v1\x00"
_SIGNATURE = 64  # bytes: r || s
_MAX_COMMAND_BODY = 320  # bytes
_COMMAND_MEMBERS = ("v", "device_id", "seq", "exp", "kind", "args")


def signer_key(signer_der: bytes, root_der: bytes) -> ec.EllipticCurvePublicKey | None:
    """The command signer's key, once its certificate is shown to be issued by the pinned root
    and for command signing only; None otherwise (the device then refuses every command with
    `no_signer`)."""
    try:
        cert = x509.load_der_x509_certificate(signer_der)
        cert.verify_directly_issued_by(x509.load_der_x509_certificate(root_der))
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        key = cert.public_key()
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return None
    if list(eku) != [COMMAND_EKU] or not isinstance(key, ec.EllipticCurvePublicKey):
        return None
    return key


@dataclass(frozen=True)
class Verdict:
    """What a device makes of a command payload: the body if accepted, else the reason."""

    body: dict[str, Any] | None
    reason: str | None
    seq: int | None  # as the body says, when it could be read


def _int(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def check_command(
    payload: bytes,
    key: ec.EllipticCurvePublicKey | None,
    device_id: str,
    last_seq: int,
    now: float,
) -> Verdict:
    """The device's checks in the documented order: the signature (`altered`), a JSON object
    (`malformed`), then each rule on its member when the member is there: `device_id`
    (`foreign`), `exp` (`expired`, also when equal to now), `seq` (`replayed`); last the
    body's shape (`malformed`: a member missing or of the wrong type, `v` not 1, over 320
    bytes). `seq` is reported once the signature holds and the body gives one."""
    if key is None:
        return Verdict(None, "no_signer", None)
    sig, body = payload[:_SIGNATURE], payload[_SIGNATURE:]
    if len(sig) < _SIGNATURE:
        return Verdict(None, "altered", None)
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), COMMAND_LABEL + body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return Verdict(None, "altered", None)
    try:
        doc = json.loads(body)
    except ValueError:
        return Verdict(None, "malformed", None)
    if not isinstance(doc, dict):
        return Verdict(None, "malformed", None)
    seq, exp = _int(doc.get("seq")), _int(doc.get("exp"))
    if "device_id" in doc and doc["device_id"] != device_id:
        return Verdict(None, "foreign", seq)
    if exp is not None and exp <= now:
        return Verdict(None, "expired", seq)
    if seq is not None and seq <= last_seq:
        return Verdict(None, "replayed", seq)
    if (
        any(m not in doc for m in _COMMAND_MEMBERS)
        or seq is None
        or exp is None
        or doc["v"] != 1
        or not isinstance(doc["kind"], str)
        or not isinstance(doc["args"], dict)
        or len(body) > _MAX_COMMAND_BODY
    ):
        return Verdict(None, "malformed", seq)
    return Verdict(doc, None, seq)
