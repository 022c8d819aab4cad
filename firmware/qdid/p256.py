# NIST P-256 (FIPS 186-5, SP 800-186 section 3.2.1.3): keys, ECDSA with RFC 6979 nonces, ECDH.
#
# Scalars are ints, points travel as 65-byte SEC1 uncompressed encodings (0x04 || X || Y) and
# signatures as 64-byte r || s, big-endian.
#
# Arithmetic: Jacobian coordinates (X, Y, Z) <-> (X/Z^2, Y/Z^3), the a = -3 doubling formula and
# mixed Jacobian + affine addition, one field inversion at the end (Fermat: x^(p-2)). Additions
# and subtractions are left unreduced; each product is reduced once with % _P (Python ints carry
# the extra bits and % gives a non-negative result), which on MicroPython's mpz costs less than
# reducing after every step.
#
# Secret scalars (key generation, signing, ECDH) go through fixed sequences of point operations:
# every window costs the same doublings and one addition, table entries are picked by scanning the
# whole table with masks, never by a secret index, and the infinity cases are merged with masks
# rather than branches. MicroPython's big ints are not constant-time themselves (their length
# follows their value), so this removes the large leaks (branches, table indices), not every one.
from micropython import const
import hashlib
from qdid.hmac import hmac_sha256

_P = const(0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF)  # field prime
_B = const(0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B)  # curve b (a = -3)
N = const(0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551)  # group order
_NM2 = const(0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC63254F)  # n - 2
_PM2 = const(0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFD)  # p - 2
_PMN = const(0x000000000000000000000000000000004319055358E8617B0C46353D039CDAAE)  # p - n

# Fixed-base comb (Lim-Lee, 4 teeth 64 bits apart): entry j (1..15) is the affine point
# sum(bit b of j) * 2^(64*b) * G, as x, y pairs; entry 1 is G itself. The device test
# test_comb_table_matches_generator recomputes them from G.
_COMB = (
    0x6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296,
    0x4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5,
    0x0fa822bc2811aaa58492592e326e25de29493baaad651f7e90e75cb48e14db63,
    0xbff44ae8f5dba80d6f4ad4bcb3df188b34b1a65050fe82f5e41124545f462ee7,
    0x300a4bbc89d6726fb257c0de95e02789e96c98fd0d35f1fa93391ce2097992af,
    0x72aac7e0d09b46447f1ddb25ff1e3c6f5bb1eeada9d806a5aa54a291c08127a0,
    0x447d739beedb5e67fb982fd588c6766efc35ff7dc297eac357c84fc9d789bd85,
    0x2d4825ab834131eee12e9d953a4aaff73d349b95a7fae5000c7e33c972e25b32,
    0xef9519328a9c72ffddc6068bb91dfc60ef7fbd2b1a0a11b713949c932a1d367f,
    0x611e9fc37dbb2c9bc1ee9807022c219c23183b0895ca1740196035a77376d8a8,
    0x550663797b51f5d87dea6482e11238bf2936df5ec6c9bc36cae2b1920b57f4bc,
    0x157164848aecb8510afa40018d9d50e59fb3d576dbdefbe144ffe216348a964c,
    0xeb5d7745b21141eaa2e8f483f43e43917ccd84e70d715f26e48ecafffc5cde01,
    0xeafd72ebdbecc17b0990e6a158006cee85f22cfe2844b645cac917e2731a3479,
    0xa6d39677a78492762736ff8344315fc596439591a3c6b94a6cf20ffb313728be,
    0x674f84749b0b881666b8babd2d27ecdf824a920c2284059bf2bab833c357f5f4,
    0x4e769e7672c9ddad31855f7db8c7fedb74e02f080203a56b2df48c04677c8a3e,
    0x42b99082de8306631ec0057206947281fb9ae16f3b9122a5a4c36165b824bbb0,
    0x78878ef61c6ce04d7fdc1ca008a1c478d1f89e799c0ce1316ef95150dda868b9,
    0xb6cb3f5d7b72c321de53142c12309def6ace570ebde08d4f9c62b9121fe0d976,
    0x0c88bc4d716b1287595c5220812ffcae5b82dd5bd54fb4967f991ed2c31a3573,
    0xdd5ddea3f3901dc618d1b5b39c04e6aa7c8181f4df2564f33a57bf635f48aca8,
    0x68f344af6b317466efe0a423083e49f343a0a28c42ba792fe96a79fb3e72ad0c,
    0x31b9c405f8540a20604ed93c24d67ff3668bfc2271f5c626cdfe17db3fb24d4a,
    0x4052bf4b6f461db9663c62c3edbad7a00d1a10144ec39c28d36b4789a2582e7f,
    0xfecf4d5190b0fc61862be6bd71d70cc8e724f33999bfcc5b235a27c3188d25eb,
    0x1eddbae2c802e41a123202a8f62bff7aafdf5cc08526a7a474346c10a1d4cfac,
    0x43104d86560ebcfc0c45f45273db33a036e06b7e4c7019178fa0af2dd603f844,
    0xb48e26b484f7a21c0a4a46fb6aaf363a66b0de3225c4744b9615b5110d1d78e5,
    0xfac015404d4d3dab64131bcdfed6f668c004e4048b7b0f9806ebb0f621a01b2d,
)

_GX = const(0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296)
_GY = const(0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5)


def _dbl(X, Y, Z):
    # dbl-2001-b (Bernstein-Lange EFD, a = -3): 3M + 5S. Y = 0 never occurs: the group has odd
    # order, so no point of order 2.
    d = Z * Z % _P
    g = Y * Y % _P
    b = X * g % _P
    a = 3 * (X - d) * (X + d) % _P
    X3 = (a * a - 8 * b) % _P
    return X3, (a * (4 * b - X3) - 8 * (g * g)) % _P, 2 * Y * Z % _P


def _madd(X1, Y1, Z1, x2, y2):
    # madd-2004-hmv (EFD): Jacobian + affine, 8M + 3S. Wrong (not a crash) when the inputs are
    # equal, opposite or at infinity; the callers show why those cases cannot reach it or mask
    # the result.
    t1 = Z1 * Z1 % _P
    t2 = t1 * Z1 % _P
    h = x2 * t1 % _P - X1
    r = y2 * t2 % _P - Y1
    hh = h * h % _P
    hhh = hh * h % _P
    v = X1 * hh % _P
    X3 = (r * r - hhh - 2 * v) % _P
    return X3, (r * (v - X3) - Y1 * hhh) % _P, Z1 * h % _P


def _pick(idx, tbl, X, Y, Z, rinf):
    # R + tbl[idx] with idx secret: scan all 15 entries with masks (entry 0 is the point at
    # infinity and contributes nothing), then merge the infinity cases with masks.
    tx = 0
    ty = 0
    for j in range(1, 16):
        m = ((idx ^ j) - 1) >> 8  # -1 when j == idx, else 0 (idx, j < 16)
        tx |= tbl[2 * j - 2] & m
        ty |= tbl[2 * j - 1] & m
    nX, nY, nZ = _madd(X, Y, Z, tx, ty)
    m = -(((idx - 1) >> 8) & 1)  # -1 when the entry is infinity: keep R
    nX ^= (nX ^ X) & m
    nY ^= (nY ^ Y) & m
    nZ ^= (nZ ^ Z) & m
    m = -rinf  # -1 when R is infinity: take the entry (Z = 1)
    nX ^= (nX ^ tx) & m
    nY ^= (nY ^ ty) & m
    nZ ^= (nZ ^ 1) & m
    return nX, nY, nZ, rinf & (((idx - 1) >> 8) & 1)


def _mul_g(k):
    # k * G for 0 <= k < n by the comb: 63 doublings and 64 table additions whatever k is.
    # Column c adds T[idx] with idx bit b = bit (c + 64*b) of k, so R = sum 2^c T[idx_c] = kG.
    # Before the addition R = sum_b A_b 2^(64b) G (A_b even, < 2^(64-c)) and
    # T = sum_b e_b 2^(64b) G (e_b in {0, 1}). R = -T would need k >> c = 0 mod n, and R = T
    # would need k = n + 2E (E = sum e_b 2^(64b)); neither holds for 0 < k < n, so the mixed
    # addition only ever meets the infinity cases, which _pick masks.
    tbl = _COMB
    X = 0
    Y = 0
    Z = 1
    inf = 1
    for c in range(63, -1, -1):
        if c != 63:  # public: R is still infinity before the first column
            X, Y, Z = _dbl(X, Y, Z)
        idx = (k >> c) & 1 | (k >> (c + 63)) & 2 | (k >> (c + 126)) & 4 | (k >> (c + 189)) & 8
        X, Y, Z, inf = _pick(idx, tbl, X, Y, Z, inf)
    return X, Y, Z, inf


def _table(x, y):
    # Affine j * Q for j = 1..15 as x, y pairs. (j-1)Q != +-Q for j >= 3 (Q has prime order n),
    # so the mixed additions are regular; one inversion for all (Montgomery's trick).
    pts = [(x, y, 1), _dbl(x, y, 1)]
    for _ in range(13):
        X, Y, Z = pts[-1]
        pts.append(_madd(X, Y, Z, x, y))
    acc = [1] * 15
    a = 1
    for j in range(15):
        acc[j] = a
        a = a * pts[j][2] % _P
    inv = pow(a, _PM2, _P)
    out = [0] * 30
    for j in range(14, -1, -1):
        X, Y, Z = pts[j]
        zi = inv * acc[j] % _P  # 1 / Z_j
        inv = inv * Z % _P
        z2 = zi * zi % _P
        out[2 * j] = X * z2 % _P
        out[2 * j + 1] = Y * z2 % _P * zi % _P
    return out


def _mul(k, x, y):
    # k * Q for 0 < k < n, fixed 4-bit windows from the top: 4 doublings and one table
    # addition per window whatever k is. Before the addition R = 16A Q with 16A + j = k >> 4i,
    # 0 < k >> 4i < n; R = T would need 16A = j (1 <= j <= 15, impossible) and R = -T would
    # need k >> 4i = 0 mod n, so only the infinity cases occur, masked in _pick.
    tbl = _table(x, y)
    X = 0
    Y = 0
    Z = 1
    inf = 1
    for i in range(252, -1, -4):
        if i != 252:  # public: R is still infinity before the first window
            X, Y, Z = _dbl(X, Y, Z)
            X, Y, Z = _dbl(X, Y, Z)
            X, Y, Z = _dbl(X, Y, Z)
            X, Y, Z = _dbl(X, Y, Z)
        X, Y, Z, inf = _pick((k >> i) & 15, tbl, X, Y, Z, inf)
    return X, Y, Z, inf


def _affine(X, Y, Z):
    zi = pow(Z, _PM2, _P)
    z2 = zi * zi % _P
    return X * z2 % _P, Y * z2 % _P * zi % _P


def _encode(x, y):
    return b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")


def _decode(pub):
    # SEC1 2.3.4 with the SP 800-56A 5.6.2.3.3 partial check: uncompressed form only,
    # coordinates in [0, p-1], y^2 = x^3 - 3x + b. Infinity has no 65-byte encoding.
    # The cofactor is 1, so a point on the curve has order n. Returns None when invalid.
    if not isinstance(pub, (bytes, bytearray)) or len(pub) != 65 or pub[0] != 4:
        return None
    x = int.from_bytes(pub[1:33], "big")
    y = int.from_bytes(pub[33:65], "big")
    if x >= _P or y >= _P:
        return None
    if (y * y - (x * x - 3) * x - _B) % _P:
        return None
    return x, y


def _check_scalar(d):
    if not isinstance(d, int) or d < 1 or d >= N:
        raise ValueError  # private key out of [1, n-1]


def is_valid_public_key(pub65):
    return _decode(pub65) is not None


def public_key(d):
    _check_scalar(d)
    X, Y, Z, _ = _mul_g(d)  # not infinity: 0 < d < n
    x, y = _affine(X, Y, Z)
    return _encode(x, y)


def scalar_from_seed(seed):
    # Hash to a scalar by rejection (FIPS 186-5 A.2.2 style): c = SHA-256(seed || counter), the
    # counter a 4-byte big-endian int from 0; the first c with 1 <= c <= n-1 is the key. A
    # rejection has probability about 2^-32, so the loop practically never runs twice.
    ctr = 0
    while True:
        h = hashlib.sha256(seed)
        h.update(ctr.to_bytes(4, "big"))
        c = int.from_bytes(h.digest(), "big")
        if 0 < c < N:
            return c
        ctr += 1


def _sign(d, e, k):
    # FIPS 186-5 6.4.1 steps 4-8; returns None when r or s is 0 (the caller takes another k).
    X, Y, Z, _ = _mul_g(k)
    x, _ = _affine(X, Y, Z)
    r = x % N
    if r == 0:
        return None
    s = pow(k, _NM2, N) * (e + r * d) % N
    if s == 0:
        return None
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _check_digest(digest):
    if not isinstance(digest, (bytes, bytearray)) or len(digest) != 32:
        raise ValueError  # a SHA-256 digest is 32 bytes


def sign_digest_k(d, digest32, k):
    # ECDSA with a caller-chosen nonce, for the NIST SigGen vectors (which give k). Never use
    # it for real signatures: a repeated or biased k gives the private key away.
    _check_scalar(d)
    _check_digest(digest32)
    if not isinstance(k, int) or k < 1 or k >= N:
        raise ValueError  # nonce out of [1, n-1]
    sig = _sign(d, int.from_bytes(digest32, "big"), k)
    if sig is None:
        raise ValueError  # this k gives r = 0 or s = 0
    return sig


def sign_digest(d, digest32, extra=b""):
    # ECDSA (FIPS 186-5 6.4.1) with the nonce of RFC 6979 section 3.2 (HMAC-SHA256; qlen =
    # hlen = 256, so bits2int is a plain big-endian read). `extra` is the optional additional
    # data k' of RFC 6979 section 3.6 (e.g. DRBG output to hedge against faults); with the
    # default b"" the signature is exactly RFC 6979's.
    _check_scalar(d)
    _check_digest(digest32)
    e = int.from_bytes(digest32, "big")
    seed = d.to_bytes(32, "big") + (e % N).to_bytes(32, "big") + extra  # int2octets || bits2octets
    V = b"\x01" * 32
    K = hmac_sha256(b"\x00" * 32, V + b"\x00" + seed)
    V = hmac_sha256(K, V)
    K = hmac_sha256(K, V + b"\x01" + seed)
    V = hmac_sha256(K, V)
    while True:
        V = hmac_sha256(K, V)
        k = int.from_bytes(V, "big")
        if 0 < k < N:
            sig = _sign(d, e, k)
            if sig is not None:
                return sig
        # step 3.2 h.3: out of range or a zero r/s, derive the next candidate
        K = hmac_sha256(K, V + b"\x00")
        V = hmac_sha256(K, V)


def _add_public(P1, P2):
    # General Jacobian addition (add-1998-cmo-2 with its special cases), public inputs only:
    # it branches on the values.
    X1, Y1, Z1, i1 = P1
    X2, Y2, Z2, i2 = P2
    if i1:
        return P2
    if i2:
        return P1
    z1z1 = Z1 * Z1 % _P
    z2z2 = Z2 * Z2 % _P
    u1 = X1 * z2z2 % _P
    u2 = X2 * z1z1 % _P
    s1 = Y1 * Z2 % _P * z2z2 % _P
    s2 = Y2 * Z1 % _P * z1z1 % _P
    h = (u2 - u1) % _P
    r = (s2 - s1) % _P
    if h == 0:
        if r == 0:
            X3, Y3, Z3 = _dbl(X1, Y1, Z1)
            return X3, Y3, Z3, 0
        return 0, 0, 1, 1
    hh = h * h % _P
    hhh = hh * h % _P
    v = u1 * hh % _P
    X3 = (r * r - hhh - 2 * v) % _P
    Y3 = (r * (v - X3) - s1 * hhh) % _P
    return X3, Y3, Z1 * Z2 % _P * h % _P, 0


def verify_digest(pub65, digest32, sig64):
    # ECDSA verification (FIPS 186-5 6.4.2). Every invalid input gives False: a bad key
    # encoding, a point off the curve, r or s outside [1, n-1], wrong lengths or types.
    Q = _decode(pub65)
    if Q is None:
        return False
    if not isinstance(digest32, (bytes, bytearray)) or len(digest32) != 32:
        return False
    if not isinstance(sig64, (bytes, bytearray)) or len(sig64) != 64:
        return False
    r = int.from_bytes(sig64[:32], "big")
    s = int.from_bytes(sig64[32:], "big")
    if not (0 < r < N and 0 < s < N):
        return False
    e = int.from_bytes(digest32, "big")
    w = pow(s, _NM2, N)
    u1 = e * w % N
    u2 = r * w % N  # in [1, n-1]: r, w != 0 and n is prime
    X, Y, Z, inf = _add_public(_mul_g(u1), _mul(u2, Q[0], Q[1]))
    if inf:
        return False
    # x(R) mod n == r without an inversion: X = x * Z^2, and x is r or r + n (x < p).
    zz = Z * Z % _P
    if X == r * zz % _P:
        return True
    return r < _PMN and X == (r + N) * zz % _P


def ecdh(d, peer_pub65):
    # ECC CDH primitive (SP 800-56A 5.7.1.2): the x coordinate of d * Q, 32 bytes. The peer
    # key is fully validated first (cofactor 1), so the result is never infinity.
    _check_scalar(d)
    Q = _decode(peer_pub65)
    if Q is None:
        raise ValueError  # peer public key malformed or not on the curve
    X, Y, Z, _ = _mul(d, Q[0], Q[1])
    x, _ = _affine(X, Y, Z)
    return x.to_bytes(32, "big")
