"""The device identity as a board runs it: firmware compiled to .mpy, the unix board over its
die, `micropython -X heapsize=64k`, one process per power cycle. Everything the device derives
is cross-checked with `cryptography` on the host (HKDF seeds, the fuzzy extractor's tag, the
P-256 key, signatures, the CSR).

Seeds and the secret reach the host only through a test script run on the device below; the
firmware itself never prints them."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

from hil import unixport

HEAP = unixport.HEAP_IDENTITY  # 64 KiB: the identity budget of docs and hil/unixport.py
SEED_A = "00112233445566778899aabbccddeeff"
SEED_B = "ffeeddccbbaa99887766554433221100"
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

# Test-only device script: the secret and seeds, for the host to recompute. Never shipped.
REVEAL = """
import board, binascii, gc, sys, qdid
from qdid import debias
b = board.make()
resp = b.sram_bits(debias.RESPONSE_LEN)  # the same snapshot boot() reads, then forgets
with open("data/helper.bin", "rb") as f:
    helper = f.read()
print("SECRET", binascii.hexlify(debias.reproduce(resp, helper)).decode())
resp = debias = None
for m in ("debias", "polarsc"):  # free their heap, as boot() does with its own copies
    del sys.modules["qdid." + m]
    delattr(qdid, m)
gc.collect()
from qdid import identity
ident = identity.boot(b)
for i in range(8):
    print("SEED", i, binascii.hexlify(ident.seed(i)).decode())
print("PUB", binascii.hexlify(ident.public_key).decode())
"""

SIGN = """
import board, binascii, hashlib
from qdid import identity
ident = identity.boot(board.make())
sig = ident.sign_digest(hashlib.sha256(b"qlink host check").digest())
print("SIG", binascii.hexlify(sig).decode())
print("CSR", binascii.hexlify(ident.csr()).decode())
print("PUB", binascii.hexlify(ident.public_key).decode())
"""


@dataclass
class Device:
    fs: Path
    die: Path

    def run(self, code: str, **env: str) -> subprocess.CompletedProcess[str]:
        full = dict(os.environ)
        full.pop("QLINK_WARM_BOOT", None)
        full["QLINK_DIE"] = str(self.die)
        full["MICROPYPATH"] = str(self.fs)  # like a board: its own filesystem only
        full.update(env)
        return subprocess.run(
            [unixport.micropython(), "-X", f"heapsize={HEAP}"],
            input=code,
            cwd=self.fs,
            env=full,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def enrol(self, **env: str) -> dict[str, str]:
        proc = self.run("import enrol\n", **env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        lines = proc.stdout.splitlines()
        assert len(lines) == 1 and lines[0].startswith("QDID "), proc.stdout
        identity: dict[str, str] = json.loads(lines[0][5:])
        return identity

    def report(self, code: str) -> dict[str, list[list[str]]]:
        """Run a test script once (one power cycle); its `TAG value...` lines, by tag."""
        proc = self.run(code)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out: dict[str, list[list[str]]] = {}
        for line in proc.stdout.splitlines():
            tag, *values = line.split()
            out.setdefault(tag, []).append(values)
        return out

    @property
    def helper(self) -> bytes:
        return (self.fs / "data" / "helper.bin").read_bytes()


def _mpy_cross(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [*unixport.mpy_cross_cmd(), "-o", str(dst), str(src)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The device image: qdid and enrol.py as .mpy (as on a real board), the unix board HAL."""
    root = tmp_path_factory.mktemp("image")
    for src in sorted((unixport.FIRMWARE / "qdid").glob("*.py")):
        _mpy_cross(src, root / "qdid" / (src.stem + ".mpy"))
    _mpy_cross(unixport.FIRMWARE / "enrol.py", root / "enrol.mpy")
    for name in ("board.py", "silicon.py"):  # the HAL ships as .mpy too, like the firmware
        _mpy_cross(unixport.BOARDS / "unix" / name, root / (name[:-3] + ".mpy"))
    return root


def _device(tmp_path: Path, image: Path, seed: str, name: str = "dev") -> Device:
    fs = tmp_path / name / "fs"
    shutil.copytree(image, fs)
    die = tmp_path / name / "die.json"
    die.write_text(json.dumps({"seed": seed}))
    return Device(fs, die)


@pytest.fixture
def device(tmp_path: Path, image: Path) -> Device:
    return _device(tmp_path, image, SEED_A)


def _public_key(pub_hex: str) -> ec.EllipticCurvePublicKey:
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), bytes.fromhex(pub_hex))


def test_same_device_id_on_every_power_cycle(device: Device) -> None:
    first = device.enrol()
    helper = device.helper
    for _ in range(4):
        assert device.enrol() == first
    assert device.helper == helper
    assert sorted(p.name for p in (device.fs / "data").iterdir()) == ["helper.bin"]


def test_device_id_is_sha256_of_the_public_key(device: Device) -> None:
    ident = device.enrol()
    pub = bytes.fromhex(ident["public_key"])
    assert len(pub) == 65 and pub[0] == 4
    _public_key(ident["public_key"])  # a point on P-256, or this raises
    assert ident["device_id"] == hashlib.sha256(pub).hexdigest()
    assert set(ident) == {"device_id", "public_key"}


def test_different_dies_get_different_ids(tmp_path: Path, image: Path) -> None:
    a = _device(tmp_path, image, SEED_A, "a").enrol()
    b = _device(tmp_path, image, SEED_B, "b").enrol()
    assert a["device_id"] != b["device_id"]


def test_seeds_match_cryptography_hkdf(device: Device) -> None:
    ident = device.enrol()
    out = device.report(REVEAL)
    secret = bytes.fromhex(out["SECRET"][0][0])
    seeds = {int(i): bytes.fromhex(s) for i, s in out["SEED"]}
    assert sorted(seeds) == list(range(8))
    helper = device.helper
    salt = hashlib.sha256(helper).digest()
    for i, seed in seeds.items():
        want = HKDF(
            algorithm=hashes.SHA256(), length=16, salt=salt, info=b"qlink/seed/%d" % i
        ).derive(secret)
        assert seed == want
    assert len(set(seeds.values())) == 8
    # Profile 5 (debiased polar): header, 320-byte pair selection, 128-byte offset, then
    # HMAC-SHA256 keyed by the secret over label || header || selection || offset, truncated to
    # 16 bytes. The selection marks exactly the 1024 kept pairs.
    assert len(helper) == 468
    assert helper[:4] == b"\x05\x0a\x1f\x83"
    assert sum(bin(b).count("1") for b in helper[4:324]) == 1024
    tag = hmac.new(secret, b"qlink/fe/tag\x00" + helper[:452], hashlib.sha256).digest()
    assert helper[452:] == tag[:16]
    # Seed 0 -> scalar (SHA-256(seed || counter), first in [1, n-1]) -> the public key.
    d = int.from_bytes(hashlib.sha256(seeds[0] + b"\x00\x00\x00\x00").digest(), "big")
    assert 0 < d < P256_N
    pub = ec.derive_private_key(d, ec.SECP256R1()).public_key()
    assert pub.public_numbers() == _public_key(ident["public_key"]).public_numbers()
    assert out["PUB"][0][0] == ident["public_key"]


def test_nothing_secret_in_the_device_filesystem(device: Device) -> None:
    device.enrol()
    out = device.report(REVEAL)
    secrets = [bytes.fromhex(out["SECRET"][0][0])] + [bytes.fromhex(s) for _, s in out["SEED"]]
    files = [p for p in device.fs.rglob("*") if p.is_file()]
    assert files
    for path in files:
        content = path.read_bytes()
        for s in secrets:
            assert s[:8] not in content and s[:8].hex().encode() not in content


def test_signature_and_csr_verify_with_cryptography(device: Device) -> None:
    ident = device.enrol()
    out = device.report(SIGN)
    sig_hex, csr_hex, pub_hex = out["SIG"][0][0], out["CSR"][0][0], out["PUB"][0][0]
    assert pub_hex == ident["public_key"]
    key = _public_key(pub_hex)
    sig = bytes.fromhex(sig_hex)
    der = utils.encode_dss_signature(int.from_bytes(sig[:32]), int.from_bytes(sig[32:]))
    key.verify(der, b"qlink host check", ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        key.verify(der, b"another message", ec.ECDSA(hashes.SHA256()))
    csr = x509.load_der_x509_csr(bytes.fromhex(csr_hex))
    assert csr.is_signature_valid
    cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == ident["device_id"]
    assert isinstance(csr.public_key(), ec.EllipticCurvePublicKey)
    assert csr.public_key().public_numbers() == key.public_numbers()  # type: ignore[union-attr]


def test_first_boot_after_a_warm_reset_refuses_to_enrol(device: Device) -> None:
    proc = device.run("import enrol\n", QLINK_WARM_BOOT="1")
    assert proc.returncode == 1
    assert proc.stdout.startswith("E enrol: enrolment needs a power-on SRAM state")
    assert "QDID" not in proc.stdout
    assert not (device.fs / "data" / "helper.bin").exists()


def test_clone_die_with_a_copied_helper_is_refused(tmp_path: Path, image: Path) -> None:
    original = _device(tmp_path, image, SEED_A, "original")
    original.enrol()
    clone = _device(tmp_path, image, SEED_B, "clone")
    (clone.fs / "data").mkdir()
    shutil.copy2(original.fs / "data" / "helper.bin", clone.fs / "data" / "helper.bin")
    proc = clone.run("import enrol\n")
    assert proc.returncode == 1
    assert "E enrol: SRAM response does not match this device's helper data" in proc.stdout
    assert "QDID" not in proc.stdout


RESIDENT = """
import sys, board
from qdid import identity
ident = identity.boot(board.make())
print("MODULES", " ".join(sorted(m for m in sys.modules if m.startswith("qdid."))))
"""


def test_a_boot_keeps_no_extractor_module_resident(device: Device) -> None:
    # The fuzzy extractor, its decoder and its framing are loaded for the boot only: the heap
    # they used is the onboarding path's (P-256, DER) afterwards.
    device.enrol()
    out = device.report(RESIDENT)
    modules = set(out["MODULES"][0])
    assert "qdid.identity" in modules and "qdid.p256" in modules
    assert not modules & {"qdid.debias", "qdid.polarsc", "qdid.offset", "qdid.polar"}


PROFILE_4 = """
import os, board
from qdid import polar
resp = board.make().sram_bits(polar.RESPONSE_LEN)
helper, _ = polar.enrol(resp, os.urandom(polar.KEY_LEN))
os.mkdir("data")
with open("data/helper.bin", "wb") as f:
    f.write(helper)
"""


def test_a_profile_4_device_still_boots_in_the_identity_heap(device: Device) -> None:
    # A device enrolled by an earlier firmware (profile 4 helper) keeps its identity: every
    # power cycle reconstructs it in 64 KiB, and its helper is never rewritten.
    proc = device.run(PROFILE_4)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    helper = device.helper
    assert len(helper) == 244 and helper[0] == 4
    first = device.enrol()
    for _ in range(3):
        assert device.enrol() == first
    assert device.helper == helper


def test_a_die_too_biased_is_refused_with_a_sentence(tmp_path: Path, image: Path) -> None:
    # Population bias 0.64: the die reads about 64 % ones, outside the 38-62 % profile 5 serves.
    dev = _device(tmp_path, image, SEED_A, "biased")
    dev.die.write_text(json.dumps({"seed": SEED_A, "bias": 0.64}))
    proc = dev.run("import enrol\n")
    assert proc.returncode == 1
    assert proc.stdout.startswith("E enrol: SRAM power-up share of ones is 6")
    assert "outside the 38-62% this identity supports" in proc.stdout
    assert "QDID" not in proc.stdout
    assert not (dev.fs / "data" / "helper.bin").exists()


def test_board_without_a_die_says_so(device: Device) -> None:
    env = {k: v for k, v in os.environ.items() if k != "QLINK_DIE"}
    env["MICROPYPATH"] = str(device.fs)
    proc = subprocess.run(
        [unixport.micropython(), "-X", f"heapsize={HEAP}"],
        input="import enrol\n",
        cwd=device.fs,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "QLINK_DIE is not set" in proc.stdout + proc.stderr
