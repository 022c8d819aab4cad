# HMAC-SHA256 (RFC 4231) and HKDF-SHA256 (RFC 5869) inside MicroPython, with the RFC vectors
# shipped in cryptography_vectors, plus the bounds of each function.
import os
from binascii import unhexlify
from qdid import hmac

_VEC = os.getenv("QLINK_VECTORS") + "/"


def _records(path, first):
    # `key = value` records, each starting at a `first` key (the HKDF file has blank lines
    # inside its records).
    rec = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith(first) and rec:
                yield rec
                rec = {}
            if line and line[0] != "#" and "=" in line:
                k, _, v = line.partition("=")
                rec[k.strip()] = v.strip()
    if rec:
        yield rec


def test_rfc4231_hmac_sha256_vectors():
    n = 0
    for rec in _records(_VEC + "HMAC/rfc-4231-sha256.txt", "Len"):
        if "MD" in rec:
            got = hmac.hmac_sha256(unhexlify(rec["Key"]), unhexlify(rec["Msg"]))
            assert got == unhexlify(rec["MD"]), rec["MD"]
            n += 1
    assert n == 6, n  # RFC 4231 cases 1-4, 6, 7 (case 5 below)


def test_rfc4231_case5_truncated_output():
    # RFC 4231 4.6: the first 128 bits of the MAC.
    got = hmac.hmac_sha256(b"\x0c" * 20, b"Test With Truncation")[:16]
    assert got == unhexlify("a3b6167473100ee06e0c796c2955552b")


def test_hmac_accepts_bytearray_and_memoryview():
    want = hmac.hmac_sha256(b"k" * 70, b"m" * 100)
    assert hmac.hmac_sha256(bytearray(b"k" * 70), memoryview(b"m" * 100)) == want
    assert len(hmac.hmac_sha256(b"", b"")) == 32


def test_rfc5869_hkdf_sha256_vectors():
    n = 0
    for rec in _records(_VEC + "KDF/rfc-5869-HKDF-SHA256.txt", "COUNT"):
        if "OKM" not in rec:
            continue
        ikm = unhexlify(rec["IKM"])
        salt = unhexlify(rec["salt"])
        info = unhexlify(rec["info"])
        length = int(rec["L"])
        prk = hmac.hkdf_extract(salt, ikm)
        assert prk == unhexlify(rec["PRK"]), rec["COUNT"]
        assert hmac.hkdf_expand(prk, info, length) == unhexlify(rec["OKM"]), rec["COUNT"]
        assert hmac.hkdf(ikm, salt, info, length) == unhexlify(rec["OKM"]), rec["COUNT"]
        n += 1
    assert n == 3, n


def test_hkdf_absent_salt_is_hashlen_zeros():
    assert hmac.hkdf_extract(b"", b"ikm") == hmac.hkdf_extract(bytes(32), b"ikm")
    assert hmac.hkdf_extract(None, b"ikm") == hmac.hkdf_extract(bytes(32), b"ikm")


def test_hkdf_expand_length_bounds():
    prk = bytes(range(32))
    assert hmac.hkdf_expand(prk, b"", 0) == b""
    full = hmac.hkdf_expand(prk, b"i", 255 * 32)
    assert len(full) == 255 * 32
    assert hmac.hkdf_expand(prk, b"i", 33) == full[:33]
    for bad in (255 * 32 + 1, -1):
        try:
            hmac.hkdf_expand(prk, b"i", bad)
        except ValueError:
            continue
        raise AssertionError("accepted length %d" % bad)


def test_compare_digest():
    a = bytes(range(32))
    assert hmac.compare_digest(a, bytes(range(32)))
    assert hmac.compare_digest(a, bytearray(a))
    assert hmac.compare_digest(b"", b"")
    assert not hmac.compare_digest(a, a[:31])
    assert not hmac.compare_digest(a, a + b"\x00")
    for i in (0, 15, 31):
        b = bytearray(a)
        b[i] ^= 0x80
        assert not hmac.compare_digest(a, b), i


def test_keys_at_the_block_size_edge():
    # RFC 2104 section 3: a 64-byte key is used as is, a 65-byte key is hashed first.
    # Known answers from CPython's hmac module.
    msg = b"block-size edge"
    assert hmac.hmac_sha256(b"\xaa" * 64, msg) == unhexlify(
        "830f1ac7c2e753192dbc27a08c54fd7cbbfa7439a593d149666e848a9e44b436"
    )
    assert hmac.hmac_sha256(b"\xaa" * 65, msg) == unhexlify(
        "3718e89fc258fed08335a02c185455e551a5660e3886d15db4eb4248f3b4ad1b"
    )
