"""Onboarding challenges that the server need not store: a hello writes nothing.

A challenge ID names its expiry (in milliseconds) and a random nonce, and carries a MAC binding
both to the device; the challenge itself is a MAC of that ID and the device ID. All are under one
key that every API worker of a server reads from the data directory (`challenge.key`, 0600, made
once), so a proof may reach any worker, or the same server after a restart, and be checked there.

The ID's first 8 bytes (expiry, nonce) are its `order`. The proof's transaction records the
order of the challenge it used on the device's row, and takes only a challenge that orders after
the one recorded there (host/server/store/challenges.py): each challenge is used once, and using
one voids those given before it. A process gives its challenges in order; a hello gives one
that orders after the device's last used one even if the clock went back. (Two workers giving
the same device challenges in the same millisecond order them by their random nonces.)

The MAC in the ID lets a proof be told apart as unknown (no challenge of this server for this
device) or expired without a read; the challenge's secrecy does not rest on it but on the key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import NamedTuple

from host.server import ServerError
from host.server.files import atomic_write

_KEY_BYTES = 32
# v2: the expiry in milliseconds. A v1 ID (expiry in seconds) must not open as a v2 one.
_ID_LABEL = b"qlink-challenge-id-v2\x00"
_CHALLENGE_LABEL = b"qlink-challenge-v2\x00"
_TAG_BYTES = 8  # of the challenge ID's 16: expiry in ms (6), nonce (2), tag (8)
_NONCE_BITS = 16


class ChallengeKeyError(ServerError):
    """The challenge key file cannot be read or is not a key."""


def load_or_create_key(path: Path) -> bytes:
    """The key in `path`, made (random, mode 0600) if there is none. Two processes making it
    at once both end with the same key: the file is made complete, then linked in, and a
    process that finds it taken reads the one that won."""
    try:
        try:
            return _read(path)
        except FileNotFoundError:
            pass
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        atomic_write(tmp, secrets.token_bytes(_KEY_BYTES), 0o600)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        return _read(path)
    except OSError as e:
        raise ChallengeKeyError(
            f"cannot read or make the challenge key {path} ({e.strerror}); "
            "check that the data directory is the server user's and writable"
        ) from None


def _read(path: Path) -> bytes:
    key = path.read_bytes()
    if len(key) != _KEY_BYTES:
        raise ChallengeKeyError(
            f"{path} is not a challenge key ({len(key)} bytes, not {_KEY_BYTES}); "
            "remove it and restart the server to make a new one"
        )
    return key


class Opened(NamedTuple):
    """A challenge ID this server gave the device: its order (`expiry_ms` of it: its expiry)
    and the challenge."""

    order: int
    challenge: bytes


def expiry_ms(order: int) -> int:
    """The expiry (Unix milliseconds) of the challenge with this order."""
    return order >> _NONCE_BITS


class Challenges:
    """Makes and checks challenges under one key."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._last = 0  # the order last given: a process gives its challenges in order

    def _tag(self, head: bytes, device_id: str) -> bytes:
        mac = hmac.new(self._key, _ID_LABEL + head + device_id.encode("ascii"), hashlib.sha256)
        return mac.digest()[:_TAG_BYTES]

    def _challenge(self, cid: bytes, device_id: str) -> bytes:
        data = _CHALLENGE_LABEL + cid + device_id.encode("ascii")
        return hmac.new(self._key, data, hashlib.sha256).digest()

    def issue(self, device_id: str, expires_ms: int) -> tuple[str, bytes]:
        """A new challenge for `device_id` that expires at `expires_ms` (Unix milliseconds):
        its ID (32 hex characters) and the challenge (32 bytes)."""
        order = (expires_ms << _NONCE_BITS) | secrets.randbits(_NONCE_BITS)
        # Later than every challenge this process gave before, within one millisecond too (a
        # step of the nonce; past its last one, a millisecond's later expiry).
        order = self._last = max(order, self._last + 1)
        head = order.to_bytes(8, "big")
        cid = head + self._tag(head, device_id)
        return cid.hex(), self._challenge(cid, device_id)

    def open(self, cid_hex: str, device_id: str) -> Opened | None:
        """The challenge ID `cid_hex` as this server gave it to `device_id`, else None.
        `cid_hex` is 32 hex characters (the proof's checks come first)."""
        cid = bytes.fromhex(cid_hex)
        head, tag = cid[:-_TAG_BYTES], cid[-_TAG_BYTES:]
        if len(head) != 8 or not hmac.compare_digest(tag, self._tag(head, device_id)):
            return None
        order = int.from_bytes(head, "big")
        return Opened(order, self._challenge(cid, device_id))
