"""HMAC_DRBG on the device (`qdid.drbg`, MicroPython) against an independent CPython reading of
NIST SP 800-90A Rev.1 section 10.1.2 (stdlib `hmac`).

The NIST CAVP vectors (tests/firmware/test_drbg.py, fetched by scripts/fetch-drbg-vectors) fix
output lengths of 128 bytes and inputs of 0 or 32 bytes; the random scripts here reach the other
paths (odd output lengths, other input lengths, several reseeds in a row) against this second
implementation, which itself reproduces every SHA-256 CAVP case.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import json
import os
import random
import sys
from pathlib import Path
from types import ModuleType

from hil import unixport

FIRMWARE_TESTS = Path(__file__).resolve().parents[1] / "firmware"


class ReferenceHmacDrbg:
    """HMAC_DRBG with SHA-256, straight from the 10.1.2 pseudocode."""

    def __init__(self, entropy: bytes, nonce: bytes, personalization: bytes) -> None:
        self.key = b"\x00" * 32
        self.value = b"\x01" * 32
        self._update(entropy + nonce + personalization)

    def _mac(self, data: bytes) -> bytes:
        return hmac.new(self.key, data, hashlib.sha256).digest()

    def _update(self, provided: bytes) -> None:
        self.key = self._mac(self.value + b"\x00" + provided)
        self.value = self._mac(self.value)
        if provided:
            self.key = self._mac(self.value + b"\x01" + provided)
            self.value = self._mac(self.value)

    def reseed(self, entropy: bytes, additional: bytes) -> None:
        self._update(entropy + additional)

    def generate(self, n: int, additional: bytes) -> bytes:
        if additional:
            self._update(additional)
        out = b""
        while len(out) < n:
            self.value = self._mac(self.value)
            out += self.value
        self._update(additional)
        return out[:n]


def _script(rng: random.Random) -> dict[str, object]:
    """One instantiation and a random sequence of generate / reseed steps."""
    steps: list[list[object]] = []
    for _ in range(rng.randrange(3, 8)):
        if rng.random() < 0.25:
            steps.append(
                [
                    "reseed",
                    rng.randbytes(rng.choice((32, 48))).hex(),
                    rng.randbytes(rng.choice((0, 7, 32))).hex(),
                ]
            )
        else:
            steps.append(
                [
                    "generate",
                    rng.choice((0, 1, 31, 32, 33, 64, 100, 257)),
                    rng.randbytes(rng.choice((0, 0, 5, 32))).hex(),
                ]
            )
    return {
        "entropy": rng.randbytes(rng.choice((32, 48, 55))).hex(),
        "nonce": rng.randbytes(rng.choice((0, 16))).hex(),
        "pers": rng.randbytes(rng.choice((0, 0, 11, 32))).hex(),
        "steps": steps,
    }


def _reference(script: dict[str, object]) -> list[str]:
    drbg = ReferenceHmacDrbg(
        bytes.fromhex(str(script["entropy"])),
        bytes.fromhex(str(script["nonce"])),
        bytes.fromhex(str(script["pers"])),
    )
    out = []
    for op, a, b in script["steps"]:  # type: ignore[attr-defined]
        if op == "reseed":
            drbg.reseed(bytes.fromhex(a), bytes.fromhex(b))
        else:
            out.append(drbg.generate(a, bytes.fromhex(b)).hex())
    return out


DEVICE_CODE = """
import json
from binascii import hexlify, unhexlify as u
from qdid.drbg import HmacDrbg
for line in open('scripts.jsonl'):
    s = json.loads(line)
    d = HmacDrbg(u(s['entropy']), u(s['nonce']), u(s['pers']))
    out = []
    for op, a, b in s['steps']:
        if op == 'reseed':
            d.reseed(u(a), u(b))
        else:
            out.append(hexlify(d.generate(a, u(b))).decode())
    print(json.dumps(out))
"""


def test_device_drbg_equals_the_reference_on_random_scripts(tmp_path: Path) -> None:
    rng = random.Random(0x800A)
    scripts = [_script(rng) for _ in range(40)]
    # one script per line: the device streams them within its 64 KiB heap
    (tmp_path / "scripts.jsonl").write_text("".join(json.dumps(s) + "\n" for s in scripts))
    proc = unixport.run_code(DEVICE_CODE, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    assert got == [_reference(s) for s in scripts]


def test_reference_reproduces_the_cavp_known_answer() -> None:
    # The same CAVP HMAC_DRBG SHA-256 case as tests/firmware/test_drbg.py: the reference
    # implementation is itself anchored to NIST's answer.
    drbg = ReferenceHmacDrbg(
        bytes.fromhex("ca851911349384bffe89de1cbdc46e6831e44d34a4fb935ee285dd14b71a7488"),
        bytes.fromhex("659ba96c601dc69fc902940805ec0ca8"),
        b"",
    )
    drbg.generate(128, b"")
    assert (
        drbg.generate(128, b"")
        .hex()
        .startswith("e528e9abf2dece54d47c7e75e5fe302149f817ea9fb4bee6f4199697d04d5b89")
    )


def _drbgcavp() -> ModuleType:
    # The device tests' reader of the vectors (plain Python that CPython runs as well).
    spec = importlib.util.spec_from_file_location("drbgcavp", FIRMWARE_TESTS / "drbgcavp.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _vectors_dir() -> Path:
    folder = os.environ.get("QLINK_DRBG_VECTORS")
    if folder:
        return Path(folder)
    # scripts/fetch-drbg-vectors puts them in the virtualenv that runs the tests.
    return Path(sys.prefix) / "share" / "qlink-vectors" / "hmac_drbg"


def test_reference_reproduces_every_sha256_cavp_case() -> None:
    cavp = _drbgcavp()
    folder = _vectors_dir()
    assert (folder / "SOURCE").exists(), (
        f"NIST CAVP HMAC_DRBG vectors missing in {folder}: run scripts/fetch-drbg-vectors"
    )
    counts: dict[str, int] = {}
    for mode in ("no_reseed", "pr_false", "pr_true"):
        n = 0
        for c in cavp.cases(str(folder), mode):
            drbg = ReferenceHmacDrbg(c.entropy, c.nonce, c.pers)
            size = len(c.returned)
            if mode == "pr_true":
                drbg.reseed(c.reseeds[0], c.adds[0])
                drbg.generate(size, b"")
                drbg.reseed(c.reseeds[1], c.adds[1])
                got = drbg.generate(size, b"")
            else:
                adds = list(c.adds)
                if mode == "pr_false":
                    drbg.reseed(c.reseeds[0], adds.pop(0))
                drbg.generate(size, adds[0])
                got = drbg.generate(size, adds[1])
            assert got == c.returned, c.name
            n += 1
        counts[mode] = n
    assert counts == {"no_reseed": 60, "pr_false": 60, "pr_true": 60}
