"""The device ID rule, in one place: SHA-256 of the device's uncompressed P-256 public key, as
64 hex characters; the server stores and compares it in lower case. The firmware computes the
same (firmware/qdid/identity.py); tests/host/test_identity_host.py checks they agree."""

from __future__ import annotations

import hashlib

from host.server import ServerError

DEVICE_ID_HEX = 64
_HEX = frozenset("0123456789abcdef")


class BadDeviceId(ServerError, ValueError):
    def __init__(self, what: str = "device ID") -> None:
        super().__init__(f"{what} must be {DEVICE_ID_HEX} hex characters")


def parse_device_id(value: object, what: str = "device ID") -> str:
    """`value` as a device ID in lower case, or BadDeviceId (`what` names it in the message)."""
    if not isinstance(value, str) or len(value) != DEVICE_ID_HEX:
        raise BadDeviceId(what)
    lower = value.lower()
    if not _HEX.issuperset(lower):
        raise BadDeviceId(what)
    return lower


def is_device_id(value: object) -> bool:
    try:
        parse_device_id(value)
    except BadDeviceId:
        return False
    return True


def device_id_of(public_key: bytes) -> str:
    """The device ID of an uncompressed public key (65 bytes, 04 || X || Y)."""
    return hashlib.sha256(public_key).hexdigest()
