"""P-256 on the device (MicroPython Unix port, 64 KiB heap) cross-checked with pyca/cryptography.

Keys, RFC 6979 signatures and ECDH secrets made by `qdid.p256` must be exactly what
`cryptography` computes, and signatures made by `cryptography` must verify on the device.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from hil import unixport

N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
KEYS = 12
SIGS_PER_KEY = 4
PREHASHED = ec.ECDSA(utils.Prehashed(hashes.SHA256()))
DETERMINISTIC = ec.ECDSA(utils.Prehashed(hashes.SHA256()), deterministic_signing=True)


class DeviceRunFailed(AssertionError):
    pass


@dataclass(frozen=True)
class DeviceKey:
    seed: bytes
    d: int
    pub: bytes
    digests: list[bytes]
    sigs: list[bytes]
    z: bytes  # device's ECDH secret with `peer`
    peer: ec.EllipticCurvePrivateKey


def run_device(code: str) -> list[dict[str, object]]:
    """Run `code` on the device; it prints one JSON object per line."""
    proc = unixport.run_code(code, timeout=120, path=[unixport.compiled_firmware()])
    if proc.returncode != 0:
        raise DeviceRunFailed(f"micropython exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def public_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    nums = key.public_key().public_numbers()
    return b"\x04" + nums.x.to_bytes(32, "big") + nums.y.to_bytes(32, "big")


def raw_to_der(sig: bytes) -> bytes:
    return utils.encode_dss_signature(int.from_bytes(sig[:32]), int.from_bytes(sig[32:]))


def der_to_raw(sig: bytes) -> bytes:
    r, s = utils.decode_dss_signature(sig)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def scalar_from_seed(seed: bytes) -> int:
    """The documented rule, written again: SHA-256(seed || 4-byte counter), first in [1, n-1]."""
    for ctr in range(2**32):
        c = int.from_bytes(hashlib.sha256(seed + ctr.to_bytes(4, "big")).digest())
        if 0 < c < N:
            return c
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def device_keys() -> list[DeviceKey]:
    """Keys from seeds, RFC 6979 signatures of random digests, ECDH with host keys."""
    rng = random.Random(0x9256)
    seeds = [rng.randbytes(16) for _ in range(KEYS)]
    digests = [[rng.randbytes(32) for _ in range(SIGS_PER_KEY)] for _ in range(KEYS)]
    peers = [ec.derive_private_key(rng.randrange(1, N), ec.SECP256R1()) for _ in range(KEYS)]
    cases = [
        {"seed": s.hex(), "digests": [d.hex() for d in ds], "peer": public_bytes(p).hex()}
        for s, ds, p in zip(seeds, digests, peers, strict=True)
    ]
    code = (
        "import json\nfrom binascii import hexlify, unhexlify\nfrom qdid import p256\n"
        f"for c in json.loads({json.dumps(json.dumps(cases))}):\n"
        "    d = p256.scalar_from_seed(unhexlify(c['seed']))\n"
        "    out = {'d': '%064x' % d, 'pub': hexlify(p256.public_key(d)).decode()}\n"
        "    out['sigs'] = [hexlify(p256.sign_digest(d, unhexlify(h))).decode()"
        " for h in c['digests']]\n"
        "    out['z'] = hexlify(p256.ecdh(d, unhexlify(c['peer']))).decode()\n"
        "    print(json.dumps(out))\n"
    )
    rows = run_device(code)
    assert len(rows) == KEYS
    return [
        DeviceKey(
            seed=seed,
            d=int(str(row["d"]), 16),
            pub=bytes.fromhex(str(row["pub"])),
            digests=ds,
            sigs=[bytes.fromhex(str(h)) for h in row["sigs"]],  # type: ignore[attr-defined]
            z=bytes.fromhex(str(row["z"])),
            peer=peer,
        )
        for row, seed, ds, peer in zip(rows, seeds, digests, peers, strict=True)
    ]


def test_device_scalar_from_seed_follows_the_documented_rule(device_keys: list[DeviceKey]) -> None:
    for k in device_keys:
        assert k.d == scalar_from_seed(k.seed)


def test_device_public_keys_match_cryptography(device_keys: list[DeviceKey]) -> None:
    for k in device_keys:
        assert k.pub == public_bytes(ec.derive_private_key(k.d, ec.SECP256R1()))


def test_device_signatures_verify_and_equal_cryptographys_rfc6979(
    device_keys: list[DeviceKey],
) -> None:
    for k in device_keys:
        key = ec.derive_private_key(k.d, ec.SECP256R1())
        for digest, raw in zip(k.digests, k.sigs, strict=True):
            key.public_key().verify(raw_to_der(raw), digest, PREHASHED)
            assert raw == der_to_raw(key.sign(digest, DETERMINISTIC))


def test_device_signature_of_another_digest_is_rejected_by_cryptography(
    device_keys: list[DeviceKey],
) -> None:
    k = device_keys[0]
    key = ec.derive_private_key(k.d, ec.SECP256R1())
    with pytest.raises(InvalidSignature):
        key.public_key().verify(raw_to_der(k.sigs[0]), bytes(32), PREHASHED)


def test_device_ecdh_agrees_with_cryptography(device_keys: list[DeviceKey]) -> None:
    for k in device_keys:
        dev_pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), k.pub)
        assert k.z == k.peer.exchange(ec.ECDH(), dev_pub)


def test_cryptography_signatures_verify_on_the_device() -> None:
    rng = random.Random(0x5167)
    cases = []
    for _ in range(10):
        key = ec.derive_private_key(rng.randrange(1, N), ec.SECP256R1())
        digest = rng.randbytes(32)
        sig = der_to_raw(key.sign(digest, PREHASHED))  # random k from OpenSSL
        bad = bytearray(sig)
        bad[rng.randrange(64)] ^= 1 << rng.randrange(8)
        cases.append((public_bytes(key).hex(), digest.hex(), sig.hex(), bytes(bad).hex()))
    code = (
        "import json\nfrom binascii import unhexlify as u\nfrom qdid import p256\n"
        f"for pub, h, sig, bad in json.loads({json.dumps(json.dumps(cases))}):\n"
        "    print(json.dumps([p256.verify_digest(u(pub), u(h), u(sig)),"
        " p256.verify_digest(u(pub), u(h), u(bad))]))\n"
    )
    proc = unixport.run_code(code, timeout=120, path=[unixport.compiled_firmware()])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert results == [[True, False]] * 10
