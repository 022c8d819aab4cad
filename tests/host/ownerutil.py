"""The device's side of a successor request, as docs/protocol.md "Successor identities" writes
it (written here from the page, not from the server's code, so the two are checked against
each other)."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from hil.simdevice import SimDevice


def successor_body(
    d: SimDevice,
    next_key: ec.EllipticCurvePrivateKey,
    reason: str,
    seq: int,
    *,
    signer: ec.EllipticCurvePrivateKey | None = None,
) -> dict[str, Any]:
    """The device's request: its current key (or `signer`) signs the next public key."""
    pub = SimDevice("", b"", key=next_key).public_key
    message = (
        b"qlink-successor-v1\x00"
        + reason.encode()
        + b"\x00"
        + d.device_id.encode()
        + pub
        + str(seq).encode()
    )
    r, s = decode_dss_signature((signer or d.key).sign(message, ec.ECDSA(hashes.SHA256())))
    return {
        "device_id": d.device_id,
        "public_key": pub.hex(),
        "reason": reason,
        "seq": seq,
        "signature": (r.to_bytes(32, "big") + s.to_bytes(32, "big")).hex(),
    }
