# P-256 ECDSA inside MicroPython against the NIST CAVP FIPS 186-3 files of cryptography_vectors
# (KeyPair, SigGen with k, SigGen responses, SigVer, PKV; the P-256 / SHA-256 sections),
# streamed line by line within the 64 KiB heap.
# timeout: 120
import os
import hashlib
from binascii import unhexlify
from qdid import p256
from cavp import int16, point, records

_ECDSA = os.getenv("QLINK_VECTORS") + "/asymmetric/ECDSA/FIPS_186-3/"


def _sha256(msg_hex):
    return hashlib.sha256(unhexlify(msg_hex)).digest()


def _sig(rec):
    return int16(rec["R"]).to_bytes(32, "big") + int16(rec["S"]).to_bytes(32, "big")


def test_keypair_vectors_give_the_public_key():
    n = 0
    for rec in records(_ECDSA + "KeyPair.rsp", "[P-256]"):
        if "d" not in rec:
            continue
        assert p256.public_key(int16(rec["d"])) == point(rec["Qx"], rec["Qy"]), rec["d"]
        n += 1
    assert n == 10, n


def test_siggen_vectors_with_given_k_sign_exactly():
    n = 0
    for rec in records(_ECDSA + "SigGen.txt", "[P-256,SHA-256]"):
        if "k" not in rec:
            continue
        d = int16(rec["d"])
        assert p256.public_key(d) == point(rec["Qx"], rec["Qy"])
        sig = p256.sign_digest_k(d, _sha256(rec["Msg"]), int16(rec["k"]))
        assert sig == _sig(rec), rec["k"]
        assert p256.verify_digest(point(rec["Qx"], rec["Qy"]), _sha256(rec["Msg"]), sig)
        n += 1
    assert n == 15, n


def test_siggen_response_signatures_verify():
    n = 0
    for rec in records(_ECDSA + "SigGen.rsp", "[P-256,SHA-256]"):
        if "S" not in rec:
            continue
        assert p256.verify_digest(point(rec["Qx"], rec["Qy"]), _sha256(rec["Msg"]), _sig(rec))
        n += 1
    assert n == 15, n


def test_sigver_vectors_pass_and_fail_as_listed():
    n = 0
    fails = 0
    for rec in records(_ECDSA + "SigVer.rsp", "[P-256,SHA-256]"):
        if "Result" not in rec:
            continue
        want = rec["Result"][0] == "P"
        got = p256.verify_digest(point(rec["Qx"], rec["Qy"]), _sha256(rec["Msg"]), _sig(rec))
        assert got is want, rec["Result"] + " " + rec["R"]
        n += 1
        fails += not want
    assert n == 15 and 0 < fails < 15, (n, fails)


def test_pkv_vectors_accept_only_valid_public_keys():
    n = 0
    fails = 0
    digest = bytes(32)
    sig = b"\x01" * 64
    for rec in records(_ECDSA + "PKV.rsp", "[P-256]"):
        if "Result" not in rec:
            continue
        want = rec["Result"][0] == "P"
        q = point(rec["Qx"], rec["Qy"])
        assert p256.is_valid_public_key(q) is want, rec["Result"] + " " + rec["Qx"]
        if want:
            assert len(p256.ecdh(1, q)) == 32
        else:
            fails += 1
            assert p256.verify_digest(q, digest, sig) is False
            try:
                p256.ecdh(1, q)
            except ValueError:
                pass
            else:
                raise AssertionError("ecdh accepted an invalid key " + rec["Qx"])
        n += 1
    assert n == 12 and 0 < fails < 12, (n, fails)
