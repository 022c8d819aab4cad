"""Onboarding challenges made and checked from the server's key (host/server/challenge.py):
the key file, and what a challenge ID binds."""

from __future__ import annotations

import hashlib
import hmac
import multiprocessing
import os
from pathlib import Path

import pytest

from host.server.challenge import ChallengeKeyError, Challenges, expiry_ms, load_or_create_key

DEVICE = "ab" * 32
OTHER = "cd" * 32


def test_the_key_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "challenge.key"
    key = load_or_create_key(path)
    assert len(key) == 32 and path.read_bytes() == key
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_key(path) == key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["challenge.key"]  # no leftovers


def _make(path: Path, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    out.put(load_or_create_key(path))


def test_processes_making_the_key_at_once_end_with_the_same_one(tmp_path: Path) -> None:
    path = tmp_path / "challenge.key"
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_make, args=(path, out)) for _ in range(6)]
    for p in procs:
        p.start()
    keys = {out.get(timeout=60) for _ in procs}
    for p in procs:
        p.join(60)
    assert keys == {path.read_bytes()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["challenge.key"]


def test_a_damaged_key_file_is_a_sentence_without_its_content(tmp_path: Path) -> None:
    path = tmp_path / "challenge.key"
    path.write_bytes(b"secret-ish" * 2)
    with pytest.raises(ChallengeKeyError) as caught:
        load_or_create_key(path)
    message = str(caught.value)
    assert str(path) in message and "remove it and restart" in message
    assert "secret-ish" not in message
    assert path.read_bytes() == b"secret-ish" * 2  # left as it was


EXPIRES_MS = 1_900_000_000_000


def test_a_challenge_opens_for_its_device_alone() -> None:
    challenges = Challenges(os.urandom(32))
    cid, challenge = challenges.issue(DEVICE, EXPIRES_MS)
    assert len(cid) == 32 and len(challenge) == 32
    opened = challenges.open(cid, DEVICE)
    assert opened is not None
    assert opened.challenge == challenge
    assert opened.order == int(cid[:16], 16) and expiry_ms(opened.order) == EXPIRES_MS
    assert challenges.open(cid, OTHER) is None
    assert Challenges(os.urandom(32)).open(cid, DEVICE) is None  # another server's key


def test_challenges_are_given_in_order_and_every_one_is_new() -> None:
    challenges = Challenges(os.urandom(32))
    # The same expiry (millisecond) for all: the nonce orders them.
    issued = [challenges.issue(DEVICE, EXPIRES_MS) for _ in range(200)]
    assert len({cid for cid, _ in issued}) == len({c for _, c in issued}) == 200
    orders = [int(cid[:16], 16) for cid, _ in issued]
    assert orders == sorted(orders)
    # An earlier expiry asked for later still gives a later challenge.
    cid, _ = challenges.issue(DEVICE, EXPIRES_MS - 5000)
    assert int(cid[:16], 16) > orders[-1]
    # The nonce is random, not a count: two processes' challenges do not collide.
    first = [Challenges(os.urandom(32)).issue(DEVICE, EXPIRES_MS)[0][:16] for _ in range(50)]
    assert len(set(first)) > 40


def test_a_changed_expiry_does_not_open() -> None:
    challenges = Challenges(os.urandom(32))
    cid, _ = challenges.issue(DEVICE, EXPIRES_MS)
    later = (EXPIRES_MS + 3_600_000).to_bytes(6, "big").hex() + cid[12:]
    assert challenges.open(later, DEVICE) is None


def test_an_id_of_the_earlier_layout_does_not_open() -> None:
    """IDs given before the expiry was in milliseconds (expiry in seconds (4), nonce (4), tag
    over both under the v1 label): the same key must not open one as a far-off expiry."""
    key = os.urandom(32)
    head = (1_900_000_000).to_bytes(4, "big") + os.urandom(4)
    tag = hmac.new(key, b"qlink-challenge-id-v1\x00" + head + DEVICE.encode(), hashlib.sha256)
    assert Challenges(key).open((head + tag.digest()[:8]).hex(), DEVICE) is None


def test_a_key_that_cannot_be_made_is_a_sentence(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "data"
    not_a_dir.write_text("a file where the data directory should be")
    with pytest.raises(ChallengeKeyError, match="cannot read or make the challenge key"):
        load_or_create_key(not_a_dir / "challenge.key")
