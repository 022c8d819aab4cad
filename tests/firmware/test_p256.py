# P-256 inside MicroPython: the precomputed tables, both scalar multiplication paths (and the
# scalars whose last step meets an exceptional case), key and signature edge cases, and every
# malformed input to sign / verify. NIST and RFC 6979 vectors are in test_p256_cavp.py,
# test_p256_ecdh.py and test_p256_rfc6979.py; the constant-cost properties in
# test_p256_constant.py.
# timeout: 60
import hashlib
from qdid import p256
from ecref import add as _add, mul as _ref_mul

_P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
_GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
_GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5
_G = b"\x04" + _GX.to_bytes(32, "big") + _GY.to_bytes(32, "big")
_MY = (1 << 288) - 1


def _enc(pt):
    return b"\x04" + pt[0].to_bytes(32, "big") + pt[1].to_bytes(32, "big")


def _must_raise(fn, *args):
    try:
        fn(*args)
    except ValueError:
        return
    raise AssertionError("no ValueError")


def test_comb_tables_match_generator():
    # Recompute the fixed-base tables: entry j of _T1 is G_3 + sum_(t<3) (+-G_t) with
    # G_t = 2^(32t) G (+ when bit t of j is set), of _T2 the same with 2^(32(t+4)) G, each
    # packed (5p - x) << 288 | (5p - y).
    teeth = []
    pt = (_GX, _GY)
    for t in range(8):
        teeth.append(pt)
        for _ in range(32):
            pt = _add(pt, pt)
    for tbl, part in ((p256._T1, teeth[:4]), (p256._T2, teeth[4:])):
        assert len(tbl) == 8
        for j in range(8):
            acc = part[3]
            for t in range(3):
                g = part[t]
                acc = _add(acc, g if j >> t & 1 else (g[0], _P - g[1]))
            assert tbl[j] == (5 * _P - acc[0]) << 288 | 5 * _P - acc[1], j


def test_public_key_of_one_is_g_and_of_n_minus_one_is_minus_g():
    assert p256.public_key(1) == _G
    neg = p256.public_key(p256.N - 1)
    assert neg[:33] == _G[:33]
    assert int.from_bytes(neg[33:], "big") == _P - _GY


def test_public_key_rejects_scalars_outside_1_to_n_minus_1():
    for d in (0, -1, p256.N, p256.N + 1, 1 << 256, "1", None, 1.0):
        try:
            p256.public_key(d)
        except ValueError:
            continue
        raise AssertionError("accepted " + repr(d))


def test_scalar_mult_paths_agree():
    # The comb (k G) and the windows (k Q) must give the same point for Q = G.
    tbl = (p256._table(_GX, _GY),)
    for k in (1, 2, 3, 15, 16, 17, 0xFFFF, 1 << 64, (1 << 255) + 12345, p256.N - 2, p256.N - 1):
        for extra in (b"", b"blinded"):
            X, Y, Z, _ = p256._mul(k, extra, tbl)
            assert Z % _P
            assert _enc(p256._affine(X, Y, Z)) == p256.public_key(k), k


def test_scalars_whose_last_step_doubles_or_meets_infinity_are_right():
    # The last step's additions are complete because some scalars near n meet R = +-T there:
    # k = n - 2 gives R = T in the last window (digit -1), and this k gives R = T in the last
    # column's second addition; n - k (even) takes the same path negated. Checked against the
    # affine double-and-add above.
    comb = 0xFFFFFFFD00000002FFFFFFFDFFFFFFFDBCE6FAADA7179E84F3B9CAC2FC632551
    tbl = (p256._table(_GX, _GY),)
    for k in (p256.N - 2, comb, p256.N - comb):
        want = _enc(_ref_mul(k, (_GX, _GY)))
        assert p256.public_key(k) == want, hex(k)
        X, Y, Z, _ = p256._mul(k, b"", tbl)
        assert _enc(p256._affine(X, Y, Z)) == want, hex(k)
    for m in range(1, 32):  # (n - m) G = -(m G)
        pub = p256.public_key(m)
        assert p256.public_key(p256.N - m) == pub[:33] + (
            _P - int.from_bytes(pub[33:], "big")
        ).to_bytes(32, "big")
        assert p256.ecdh(p256.N - m, _G) == pub[1:33], m


def test_scalar_from_seed_is_sha256_of_seed_and_counter():
    seed = b"qlink seed 0"
    want = int.from_bytes(hashlib.sha256(seed + b"\x00\x00\x00\x00").digest(), "big")
    assert want < p256.N  # this seed is accepted at counter 0
    assert p256.scalar_from_seed(seed) == want
    assert p256.scalar_from_seed(b"other") != want


def test_verify_rejects_every_malformed_input():
    d = p256.scalar_from_seed(b"verify")
    pub = p256.public_key(d)
    digest = hashlib.sha256(b"message").digest()
    sig = p256.sign_digest(d, digest)
    assert p256.verify_digest(pub, digest, sig) is True
    n = p256.N
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:], "big")

    def rs(r, s):
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    bad = [
        (pub, digest, rs(0, s)),  # r = 0
        (pub, digest, rs(r, 0)),  # s = 0
        (pub, digest, rs(r + n, s) if r + n < (1 << 256) else rs(n, s)),  # r >= n
        (pub, digest, rs(r, n)),  # s = n
        (pub, digest, rs(n, s)),  # r = n
        (pub, digest, b"\xff" * 64),  # both above n
        (pub, digest, sig[:63]),  # short signature
        (pub, digest, sig + b"\x00"),  # long signature
        (pub, digest, rs(s, r)),  # swapped
        (pub, hashlib.sha256(b"other").digest(), sig),  # other message
        (pub, digest[:31], sig),  # short digest
        (pub, digest + b"\x00", sig),  # long digest
        (p256.public_key(d + 1), digest, sig),  # other key
        (pub[:64] + bytes((pub[64] ^ 1,)), digest, sig),  # key off the curve
        (b"\x00", digest, sig),  # infinity
        (bytes(65), digest, sig),  # (0, 0)
        (pub[1:], digest, sig),  # no prefix
        (b"\x02" + pub[1:33], digest, sig),  # compressed
        (None, digest, sig),
        (pub, None, sig),
        (pub, digest, None),
        ("x" * 65, digest, sig),
        (pub, digest, "x" * 64),
    ]
    for i, (p, h, g) in enumerate(bad):
        assert p256.verify_digest(p, h, g) is False, i


def test_verify_accepts_the_other_s_as_ecdsa_does():
    # ECDSA signatures are malleable: (r, n - s) verifies too (FIPS 186-5 has no low-s rule).
    d = p256.scalar_from_seed(b"malleable")
    pub = p256.public_key(d)
    digest = hashlib.sha256(b"m").digest()
    sig = p256.sign_digest(d, digest)
    s = int.from_bytes(sig[32:], "big")
    assert p256.verify_digest(pub, digest, sig[:32] + (p256.N - s).to_bytes(32, "big"))


def test_sign_rejects_bad_inputs():
    _must_raise(p256.sign_digest, 0, bytes(32))
    _must_raise(p256.sign_digest, p256.N, bytes(32))
    _must_raise(p256.sign_digest, 1, bytes(31))
    _must_raise(p256.sign_digest, 1, "x" * 32)
    _must_raise(p256.sign_digest_k, 1, bytes(32), 0)
    _must_raise(p256.sign_digest_k, 1, bytes(32), p256.N)


def test_digest_of_zero_and_of_n_sign_and_verify():
    # e = 0 gives u1 = 0 (the comb returns infinity); e >= n is reduced mod n.
    d = p256.scalar_from_seed(b"edge")
    pub = p256.public_key(d)
    for digest in (bytes(32), p256.N.to_bytes(32, "big"), b"\xff" * 32):
        sig = p256.sign_digest(d, digest)
        assert p256.verify_digest(pub, digest, sig)


def test_verify_reduces_x_of_r_mod_n():
    # FIPS 186-5 6.4.2 step 9: r is x(R) mod n. A key constructed (with pyca/cryptography as the
    # check) so that R = u1 G + u2 Q has x(R) = n + 0x303b: the signature has r = 0x303b and only
    # the x >= n branch of the comparison accepts it. Random signatures reach it with
    # probability about 2^-128.
    pub = bytes.fromhex(
        "04cdba5a71cc796764b618398806dc484d508bde8a9c402ce2222dd614e0945d77"
        "1dcabe6d6682907f05232ac91e07f7431fdcf236ba3f18cd209cd066a656ff64"
    )
    digest = hashlib.sha256(b"x(R) >= n").digest()
    s = (0x1234567).to_bytes(32, "big")
    assert p256.verify_digest(pub, digest, (0x303B).to_bytes(32, "big") + s)
    assert not p256.verify_digest(pub, digest, (0x303C).to_bytes(32, "big") + s)
    # the unreduced x itself is out of range for r
    assert not p256.verify_digest(pub, digest, (p256.N + 0x303B).to_bytes(32, "big") + s)


def test_verify_does_not_wrap_r_plus_n_past_p():
    # Constructed like the test above, with x(R) = 5 and r = 5 + p - n: r + n exceeds p, and
    # comparing (r + n) mod p with x(R) would wrongly accept; x(R) mod n = 5 != r.
    pub = bytes.fromhex(
        "04fae9481740a548c03a115ac23b3329723989690b86e3a8b80604baea279e5172"
        "ce136b2a38a18f95d4b22f454912ed0cb51150a7a370a249b787984947cdbf3e"
    )
    digest = hashlib.sha256(b"r + n >= p").digest()
    r = 5 + _P - p256.N
    s = (0x7654321).to_bytes(32, "big")
    assert not p256.verify_digest(pub, digest, r.to_bytes(32, "big") + s)


def test_secret_scalars_take_the_same_point_operations_whatever_their_value():
    # The comb and the windows run a fixed sequence: count the calls for very different scalars
    # (few bits set, all bits set, zero digits at the top or bottom, even and odd).
    names = ("_dbl", "_madd", "_add_complete", "_pick")
    real = [getattr(p256, name) for name in names]
    calls = [0] * 4

    def counting(i):
        def fn(*args):
            calls[i] += 1
            return real[i](*args)

        return fn

    tbl = (p256._table(_GX, _GY),)
    for i, name in enumerate(names):
        setattr(p256, name, counting(i))
    try:
        seen = set()
        for k in (1, 2, 1 << 255, p256.N - 1, p256.N - 2, (1 << 128) + 1, 0xF0F0F0F0 << 200):
            for label, t in (("comb", (p256._T1, p256._T2)), ("window", tbl)):
                calls[:] = [0] * 4
                p256._mul(k, b"", t)
                seen.add((label,) + tuple(calls))
    finally:
        for name, fn in zip(names, real):
            setattr(p256, name, fn)
    # 64 table scans each; comb: 31 doublings, the first entry as the start, 61 mixed and 2
    # complete additions; windows: 63 * 4 doublings, the start, 62 mixed and 1 complete
    assert seen == {("comb", 31, 61, 2, 64), ("window", 252, 62, 1, 64)}, seen
