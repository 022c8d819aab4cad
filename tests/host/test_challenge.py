"""Onboarding challenges made and checked from the server's key (host/server/challenge.py):
the key file, and what a challenge ID binds."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from host.server.challenge import ChallengeKeyError, Challenges, load_or_create_key

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


def test_a_challenge_opens_for_its_device_alone() -> None:
    challenges = Challenges(os.urandom(32))
    cid, challenge = challenges.issue(DEVICE, 1_900_000_000)
    assert len(cid) == 32 and len(challenge) == 32
    assert challenges.open(cid, DEVICE) == (1_900_000_000, challenge)
    assert challenges.open(cid, OTHER) is None
    assert Challenges(os.urandom(32)).open(cid, DEVICE) is None  # another server's key


def test_every_challenge_is_new() -> None:
    challenges = Challenges(os.urandom(32))
    issued = [challenges.issue(DEVICE, 1_900_000_000) for _ in range(200)]
    assert len({cid for cid, _ in issued}) == len({c for _, c in issued}) == 200


def test_a_changed_expiry_does_not_open() -> None:
    challenges = Challenges(os.urandom(32))
    cid, _ = challenges.issue(DEVICE, 1_900_000_000)
    later = (1_900_003_600).to_bytes(4, "big").hex() + cid[8:]
    assert challenges.open(later, DEVICE) is None


def test_a_key_that_cannot_be_made_is_a_sentence(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "data"
    not_a_dir.write_text("a file where the data directory should be")
    with pytest.raises(ChallengeKeyError, match="cannot read or make the challenge key"):
        load_or_create_key(not_a_dir / "challenge.key")
