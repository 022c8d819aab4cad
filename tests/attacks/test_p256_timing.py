"""Timing attacks on the device's P-256: an attacker who can run an operation on keys and nonces of
its choosing and count what it costs (here exactly: x86-64 instructions of the MicroPython unix
port under callgrind, the firmware as .mpy in the 64 KiB identity heap, as bench/p256_spread.py
counts them) tries to tell short and structured secrets from random ones. Before the scalar
multiplications were made regular, public_key(1) cost 6 M instructions against 27 M for a
random key, and ecdh(1, Q) 28 M against 70 M: leading zero windows of a key or a nonce showed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from attacksuite import Attack

from bench import p256_spread
from bench.p256_spread import SCALARS, N

GOAL_PCT = p256_spread.GOAL_SPREAD_PCT
# Secrets an attacker hopes to single out: the smallest, a short one (leading zero windows),
# the largest, and a random one to compare with.
PROBES = {"1": 1, "64-bit": SCALARS["64-bit"], "n - 1": N - 1, "random": SCALARS["random a"]}


@pytest.fixture(scope="module")
def firmware(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed: the instruction counts need its callgrind tool")
    return p256_spread.compiled(tmp_path_factory.mktemp("p256-timing"))


def _probe(firmware: Path, op: str, secret: str) -> tuple[float, str]:
    """The spread of the counts over PROBES (% of their mean) and a sentence with the counts."""
    counts = p256_spread.count(firmware, op, [hex(v) for v in PROBES.values()])
    spread = 100 * (max(counts) - min(counts)) / (sum(counts) / len(counts))
    each = ", ".join(f"{name} {c / 1e6:.2f} M" for name, c in zip(PROBES, counts, strict=True))
    return spread, f"instructions for {secret} = {each}: spread {spread:.2f} %"


def test_ecdh_cost_does_not_tell_a_short_key(attack: Attack, firmware: Path) -> None:
    attack.expect(
        "ECDH key from its instruction count",
        f"ecdh(d, Q) costs the same within {GOAL_PCT:g} % for d = 1, a 64-bit d, n - 1 and a "
        "random d (it cost 28 M against 70 M instructions before)",
    )
    spread, text = _probe(firmware, p256_spread.OPERATIONS["ecdh"], "d")
    attack.observe(text)
    assert spread <= GOAL_PCT


def test_ecdh_with_a_peer_point_of_x_zero_does_not_tell_a_short_key(
    attack: Attack, firmware: Path
) -> None:
    attack.expect(
        "ECDH key through a peer point with x = 0",
        "a peer key whose x is 0 (it stays 0 in every projective form, so work on it is "
        f"cheaper while a short key keeps R at +-Q) changes nothing: within {GOAL_PCT:g} % "
        "for the same keys",
    )
    spread, text = _probe(firmware, p256_spread.OPERATIONS["ecdh_x0"], "d")
    attack.observe(text)
    assert spread <= GOAL_PCT


def test_signing_cost_does_not_tell_a_short_nonce(attack: Attack, firmware: Path) -> None:
    attack.expect(
        "ECDSA nonce from the signing time",
        f"sign_digest_k(d, digest, k) costs the same within {GOAL_PCT:g} % for k = 1, a "
        "64-bit k, n - 1 and a random k (a nonce's top bits leaking over many signatures "
        "give the key away to a lattice attack)",
    )
    spread, text = _probe(firmware, p256_spread.OPERATIONS["sign"], "k")
    attack.observe(text)
    assert spread <= GOAL_PCT


def test_key_generation_cost_does_not_tell_a_short_key(attack: Attack, firmware: Path) -> None:
    attack.expect(
        "private key from the key-generation time",
        f"public_key(d) costs the same within {GOAL_PCT:g} % for d = 1, a 64-bit d, n - 1 "
        "and a random d (it cost 6 M against 27 M instructions before)",
    )
    spread, text = _probe(firmware, p256_spread.OPERATIONS["keygen"], "d")
    attack.observe(text)
    assert spread <= GOAL_PCT
