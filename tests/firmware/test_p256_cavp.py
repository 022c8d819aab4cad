# P-256 ECDSA inside MicroPython against the NIST CAVP FIPS 186-3 files of cryptography_vectors
# (KeyPair, SigGen with k, SigGen responses, SigVer, PKV; the P-256 / SHA-256 sections),
# streamed line by line within the 64 KiB heap.
# timeout: 120
import os
import hashlib
from binascii import unhexlify
from qdid import p256

_ECDSA = os.getenv("QLINK_VECTORS") + "/asymmetric/ECDSA/FIPS_186-3/"


def _records(path, want):
    # Yields the `key = value` records (blank-line separated) of the CAVP sections whose header
    # line equals `want`. "[B.4.2 ...]" in KeyPair.rsp is a method line, not a curve section.
    sect = None
    rec = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line[0] == "[":
                if rec and sect == want:
                    yield rec
                rec = {}
                if line and not line.startswith("[B.4"):
                    sect = line
                continue
            if line[0] == "#":
                continue
            eq = line.find("=")
            if eq > 0:
                rec[line[:eq].strip()] = line[eq + 1 :].strip()
    if rec and sect == want:
        yield rec


def _int(h):
    return int(h, 16)


def _point(qx, qy):
    # SEC1 uncompressed encoding; a coordinate wider than 256 bits gets a wider field, which
    # makes the encoding the wrong length (it can only be rejected).
    x = _int(qx)
    y = _int(qy)
    n = 32 if x < (1 << 256) and y < (1 << 256) else 33
    return b"\x04" + x.to_bytes(n, "big") + y.to_bytes(n, "big")


def _sha256(msg_hex):
    return hashlib.sha256(unhexlify(msg_hex)).digest()


def _sig(rec):
    return _int(rec["R"]).to_bytes(32, "big") + _int(rec["S"]).to_bytes(32, "big")


def test_keypair_vectors_give_the_public_key():
    n = 0
    for rec in _records(_ECDSA + "KeyPair.rsp", "[P-256]"):
        if "d" not in rec:
            continue
        assert p256.public_key(_int(rec["d"])) == _point(rec["Qx"], rec["Qy"]), rec["d"]
        n += 1
    assert n == 10, n


def test_siggen_vectors_with_given_k_sign_exactly():
    n = 0
    for rec in _records(_ECDSA + "SigGen.txt", "[P-256,SHA-256]"):
        if "k" not in rec:
            continue
        d = _int(rec["d"])
        assert p256.public_key(d) == _point(rec["Qx"], rec["Qy"])
        sig = p256.sign_digest_k(d, _sha256(rec["Msg"]), _int(rec["k"]))
        assert sig == _sig(rec), rec["k"]
        assert p256.verify_digest(_point(rec["Qx"], rec["Qy"]), _sha256(rec["Msg"]), sig)
        n += 1
    assert n == 15, n


def test_siggen_response_signatures_verify():
    n = 0
    for rec in _records(_ECDSA + "SigGen.rsp", "[P-256,SHA-256]"):
        if "S" not in rec:
            continue
        assert p256.verify_digest(_point(rec["Qx"], rec["Qy"]), _sha256(rec["Msg"]), _sig(rec))
        n += 1
    assert n == 15, n


def test_sigver_vectors_pass_and_fail_as_listed():
    n = 0
    fails = 0
    for rec in _records(_ECDSA + "SigVer.rsp", "[P-256,SHA-256]"):
        if "Result" not in rec:
            continue
        want = rec["Result"][0] == "P"
        got = p256.verify_digest(_point(rec["Qx"], rec["Qy"]), _sha256(rec["Msg"]), _sig(rec))
        assert got is want, rec["Result"] + " " + rec["R"]
        n += 1
        fails += not want
    assert n == 15 and 0 < fails < 15, (n, fails)


def test_pkv_vectors_accept_only_valid_public_keys():
    n = 0
    fails = 0
    digest = bytes(32)
    sig = b"\x01" * 64
    for rec in _records(_ECDSA + "PKV.rsp", "[P-256]"):
        if "Result" not in rec:
            continue
        want = rec["Result"][0] == "P"
        q = _point(rec["Qx"], rec["Qy"])
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
