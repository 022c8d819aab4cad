"""One device ID rule (host/server/deviceid.py): 64 hex characters, SHA-256 of the
uncompressed public key, compared in lower case."""

from __future__ import annotations

import hashlib

import pytest

from host.server.deviceid import BadDeviceId, device_id_of, is_device_id, parse_device_id


def test_64_hex_characters_are_a_device_id_in_lower_case() -> None:
    assert parse_device_id("AB" * 32) == "ab" * 32
    assert is_device_id("0" * 64)


@pytest.mark.parametrize(
    "value", ["0" * 63, "0" * 65, "g" + "0" * 63, " " + "0" * 63, "", None, 7, b"0" * 64]
)
def test_anything_else_is_refused_with_the_rule(value: object) -> None:
    with pytest.raises(BadDeviceId, match="device ID must be 64 hex characters"):
        parse_device_id(value)
    assert not is_device_id(value)


def test_the_id_is_sha256_of_the_public_key() -> None:
    pub = b"\x04" + bytes(range(64))
    assert device_id_of(pub) == hashlib.sha256(pub).hexdigest()
    assert is_device_id(device_id_of(pub))
