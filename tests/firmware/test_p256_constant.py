# P-256's secret-scalar work costs the same whatever the scalar: measured inside MicroPython by
# the heap bytes each step asks for (micropython.mem_total). MicroPython's big-int work follows
# the digit counts of the values it makes, and every value it makes is an allocation of that
# many digits, so equal bytes mean equal lengths all the way through, and the same allocations
# mean the same garbage collections. (Before the multiplications were made regular, d = 1
# allocated 35 % of what a random d does.) The instruction counts themselves are taken by
# bench/p256_spread.py and held by tests/attacks/test_p256_timing.py.
# timeout: 120
import gc
import hashlib
import micropython
from qdid import p256
from ecref import mul

_P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
_N = p256.N
_GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
_GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5
# The point with x = 0 (y^2 = b): a short coordinate that a peer may choose.
_Y0 = 0x66485C780E2F83D72433BD5D84A06BB6541C2AF31DAE871728BF856A174F93F4
_Q0 = b"\x04" + bytes(32) + _Y0.to_bytes(32, "big")


def _pseudo(i):
    return int.from_bytes(hashlib.sha256(bytes((i,))).digest(), "big") % (_N - 1) + 1


# The scalars the old cost followed (mostly infinity, leading or inner zero windows, the ends of
# the range, a comb and a window scalar whose last step doubles) and pseudo-random ones.
_SCALARS = [
    1,
    2,
    0xDEADBEEFCAFEF00D,
    (1 << 128) + 1,
    1 << 255,
    _N - 2,
    _N - 1,
    0xFFFFFFFD00000002FFFFFFFDFFFFFFFDBCE6FAADA7179E84F3B9CAC2FC632551,
] + [_pseudo(i) for i in range(4)]


def _allocated(fn, *args):
    gc.collect()
    before = micropython.mem_total()
    fn(*args)
    return micropython.mem_total() - before


def _spread_pct(values):
    return 100 * (max(values) - min(values)) / min(values)


def test_table_scan_asks_the_same_heap_for_every_entry_and_sign():
    # Masks 0 and -1 blend the kept and the scanned entry: one of each whatever is picked.
    q = (p256._table(_GX, _GY), p256._table(0, _Y0))
    for tbl in (p256._T1, p256._T2) + q:
        seen = set()
        for k in range(8):
            for e in (0, 1):
                seen.add(_allocated(p256._pick, tbl, k, e))
                x, y = p256._pick(tbl, k, e)
                assert 4 * _P < x <= 5 * _P and 4 * _P <= y <= 5 * _P, (k, e)
        assert len(seen) == 1, seen


def test_scalar_multiplications_ask_the_same_heap_for_every_scalar():
    # The comb and the windows alone, blinded as keygen, signing and ECDH blind them.
    q = (p256._table(_GX, _GY),)
    for tables in ((p256._T1, p256._T2), q):
        got = [_allocated(p256._mul, k, b"blinding input", tables) for k in _SCALARS]
        assert _spread_pct(got) < 0.05, got


def test_keygen_and_ecdh_ask_the_same_heap_for_every_scalar():
    peer = p256.public_key(p256.scalar_from_seed(b"peer"))
    for name, op in (
        ("keygen", lambda d: p256.public_key(d)),
        ("ecdh", lambda d: p256.ecdh(d, peer)),
        ("ecdh, peer x = 0", lambda d: p256.ecdh(d, _Q0)),
    ):
        got = [_allocated(op, d) for d in _SCALARS]
        assert _spread_pct(got) < 0.1, (name, got)


def test_signing_asks_the_same_heap_for_every_nonce_and_key():
    # The nonce inverse and the field inversion included (_pow, on blinded values).
    d = p256.scalar_from_seed(b"signer")
    digest = hashlib.sha256(b"message").digest()
    got = [_allocated(p256.sign_digest_k, d, digest, k) for k in _SCALARS]
    assert _spread_pct(got) < 0.1, got
    got = [_allocated(p256.sign_digest, k, digest) for k in _SCALARS]
    assert _spread_pct(got) < 0.1, got


def test_blinding_moves_the_representation_not_the_point():
    for k in (1, _N - 1, _pseudo(9)):
        a = p256._mul(k, b"one input", (p256._T1, p256._T2))
        b = p256._mul(k, b"another input", (p256._T1, p256._T2))
        assert a[:3] != b[:3] and a[3] != b[3]
        assert p256._affine(a[0], a[1], a[2]) == p256._affine(b[0], b[1], b[2])


def test_ecdh_with_the_peer_point_of_x_zero_is_right():
    # This peer goes through (d / 2)(2Q); the shared secret must not notice.
    for d in (1, 2, 0xDEADBEEFCAFEF00D, _N - 1, _pseudo(7)):
        assert p256.ecdh(d, _Q0) == mul(d, (0, _Y0))[0].to_bytes(32, "big"), d
