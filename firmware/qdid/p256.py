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
# every comb column or window costs the same doublings and additions, table entries are picked
# by scanning the whole table with masks, never by a secret index, and the infinity cases are
# merged with masks rather than branches. MicroPython's big ints are not constant-time themselves
# (their length follows their value), so this removes the large leaks (branches, table
# indices), not every one.
from micropython import const
import hashlib
from qdid.hmac import hmac_sha256

_P = const(0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF)  # field prime
_B = const(0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B)  # curve b (a = -3)
N = const(0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551)  # group order
_NM2 = const(0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC63254F)  # n - 2
_PM2 = const(0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFD)  # p - 2
_PMN = const(0x000000000000000000000000000000004319055358E8617B0C46353D039CDAAE)  # p - n

_M256 = const((1 << 256) - 1)  # low 256 bits: y of a packed table entry

# Fixed-base comb (Lim-Lee, 8 teeth 32 bits apart, in two tables of 4 teeth). Entry j (1..15)
# of _T1 is the affine point sum(bit b of j) * 2^(32*b) * G, of _T2 the same times 2^128;
# each is packed as x << 256 | y so that a table scan touches one int per entry. Entry 1 of
# _T1 is G. The device test test_comb_tables_match_generator recomputes both from G.
_T1 = (
    0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C2964FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,  # noqa: E501
    0x7FE36B40AF22AF8921656B32262C71DA1AB919365C65DFB63A5A9E22185A5943E697D45825B636249F09F40407DCA6F174B3D5867B8AF212D50D152C699CA101,  # noqa: E501
    0xE35798220CEDC02A608548C24AA7358F830895E4FCCC3AC216FC51FF8101E6E4700F948E1F433A2DF3E4B396768A3299F0570BEDC523E6EFAAD2B99852C392C3,  # noqa: E501
    0x0FA822BC2811AAA58492592E326E25DE29493BAAAD651F7E90E75CB48E14DB63BFF44AE8F5DBA80D6F4AD4BCB3DF188B34B1A65050FE82F5E41124545F462EE7,  # noqa: E501
    0x300A4BBC89D6726FB257C0DE95E02789E96C98FD0D35F1FA93391CE2097992AF72AAC7E0D09B46447F1DDB25FF1E3C6F5BB1EEADA9D806A5AA54A291C08127A0,  # noqa: E501
    0x14CB5692606A4A62A9CAD33B680A7DAAE0D3EB336C224571D6E260F8EE4039A053098CFA3E1E4663878487ED997A9A3B5205EF8D8039927CFE93D3159D83BC01,  # noqa: E501
    0xA5AB9E10958F1608C22C48C5FFEA17C1585A137EF5C4AD4230368CB6D945111ED3EBC6118B1AA09A629E17EBAD0648F446ED771C49A10F77C34A47B8785B4ED9,  # noqa: E501
    0x4A5B506612A677A657880B3A18A2E902E9A521B074CA0141A84AA9397512218EEB13461CEAC089F1C42604FBE1627D40626DB15419E26D9D0BEADA7A4C4F3840,  # noqa: E501
    0x418D68DEA064219700D1A0A5FD208DFB48F9C1875E98C12DC761C1FECC0497865D7B26F6A5BA6DD4435639622EF8D32017429C50C16CAAD0481EEF5551B50759,  # noqa: E501
    0x0781B8291C6A220AC342967AA815C8575E52C4144103ECBCF9FAED0927A43281690CDE8DF015159397B2A14F1291643488F80EEEE54A05E35A8343CEEAC55F80,  # noqa: E501
    0x57F62EECA7B5D4FB54A0FE5274647EBE82D789A6DD561BECC52C00CAE38E38205E5FF8BF89BFE2AD60E9C067EFEA8F480D300594EC356DCEAA60759D48F81460,  # noqa: E501
    0x91C821D488E9843C27035D2627CAA74754D5DAD9289944395920D7B0FA3289D5DB7AECC78F879F44919ADC3734938DAC7B7DF6EA0408EBADE130DEAD9AA8A566,  # noqa: E501
    0x06F0AFDB90422D81C9C6F5415BF70C35EDDF9C6C7E1C792EBC499EE7C6FAE6D777F9E8F73F9804C47BAB8955DDE6464641A7CF1AAF7AE617214F0AD04DBC747A,  # noqa: E501
    0xBC07BB82D6536C0292052D44BCDF6567F0698FF75E4EC9655D01A765C96900D8EB165F9C1D90902AA17BF29FC7B19A1E635F210EC2E7BA735FE58CCF83762C71,  # noqa: E501
    0xE018AAA22086A46C269843F16B47957BD86848C84760C41EAF972B45F2159928383F4DB07F10EE50F2FE8863BA0DBC83D36D88B34FED7BB921A0332299698420,  # noqa: E501
)
_T2 = (
    0x447D739BEEDB5E67FB982FD588C6766EFC35FF7DC297EAC357C84FC9D789BD852D4825AB834131EEE12E9D953A4AAFF73D349B95A7FAE5000C7E33C972E25B32,  # noqa: E501
    0x8A535F566EC73617F5622DF4373713269E4C35874AFDF43AAEE9C75DF7F82F2A0455C08468B08BD737E02819085A92BFCDE533864C8C7669C5F9A0AC223094B7,  # noqa: E501
    0xFF25F55A2C214CD923FE7442010729ACEF8BF285DFD6C3F34193640BFBB7F12D94F114D38A40510000C15BA774A58D771A08EBC72AB82B74D77BF411F30F0FC8,  # noqa: E501
    0xA6D39677A78492762736FF8344315FC596439591A3C6B94A6CF20FFB313728BE674F84749B0B881666B8BABD2D27ECDF824A920C2284059BF2BAB833C357F5F4,  # noqa: E501
    0x68F344AF6B317466EFE0A423083E49F343A0A28C42BA792FE96A79FB3E72AD0C31B9C405F8540A20604ED93C24D67FF3668BFC2271F5C626CDFE17DB3FB24D4A,  # noqa: E501
    0x0AC9835F0E6155FAEB3DF8BF9D6B4A9B60FF39EDFF736545270A098D637D797DD6882B263D00D534D8AC7B195C6872B2FA24F7333FE89B0850C04B69640BC0E9,  # noqa: E501
    0x6A25FB201B4084CE8A404541B1F23D69561D30F51DC2D82E7B3068D03765581E5A0AEBFC19CFB424F5763393D06A40071E15941A5CF443D550180E1B60206329,  # noqa: E501
    0x68F6B8542783DFEEEB5B06E70CE08FFEFD75F3FA01876BD86A703F10E895DF07CBE1FEBA92E40CE6FBC8044DFDA45028CF5293D2F310BF7F90C76F8A78712655,  # noqa: E501
    0xBD6058B07B81568E83FB2D63C62CD05550D19D86ABC96FEDCC38452EF202481AF78E1FBEF8467E379EE514E409EF7DD9C51419ED83F257D4628271F170737BB6,  # noqa: E501
    0xE51F547C5972A107B422D1E7BD6F85147ED031A0E45C2258EEE44B35702476B51C309A2B25BB1387A62F98B3A9FE9A068CA922EE097C184EA25BCD6FC9CF343D,  # noqa: E501
    0x86699898A60BCD7758E0A73C3879D7D86DA147F00D75821E9BAF4D7AAAC4170AC0D84AECA4B075F432CA235D2AF12355428DEDE80187F877AE7CD4DA598A46EB,  # noqa: E501
    0xFB0249AA28A8A8FBB7FBE79E03E042EA3478E062311CB1F3DCEAFEB7328FB9EF172F46339C5FBC3E48E514E109AA13A20E540E9F3D15281350B4BB44B8EE1B8B,  # noqa: E501
    0xEBC3D35E8855A59ACBBD5F2012CA3C26846730AD139AD48C2FFBCF19DC0B10615290BEC161CE30304B3C37853FE325890DA658F5F8F4BE3A18644A975B93E742,  # noqa: E501
    0xA176C395AE64D73870E00C7531905283D7768C940D8A6FB01E3081ABB7F6BE1F9EBDEC88947B45F151AB984B9FEEEA5C087565CE611FE5069E5850BC1FA3578C,  # noqa: E501
    0x681D6BE2B2567AC59DE1E8E76080E0F8DADF6DCEC6AD55F11BCB36A57BCA0BC11DFCAB92C48087F3263F2166CF14E1B02A6A766EE58790F1DEB1EDD4763F4FCB,  # noqa: E501
)


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
    sel = 0
    for j in range(1, 16):
        sel |= tbl[j - 1] & (((idx ^ j) - 1) >> 8)  # mask -1 when j == idx, else 0 (< 16)
    tx = sel >> 256
    ty = sel & _M256
    nX, nY, nZ = _madd(X, Y, Z, tx, ty)
    tinf = ((idx - 1) >> 8) & 1  # 1 when idx == 0
    m = -tinf  # entry is infinity: keep R
    nX ^= (nX ^ X) & m
    nY ^= (nY ^ Y) & m
    nZ ^= (nZ ^ Z) & m
    m = -rinf  # R is infinity: take the entry (Z = 1)
    nX ^= (nX ^ tx) & m
    nY ^= (nY ^ ty) & m
    nZ ^= (nZ ^ 1) & m
    return nX, nY, nZ, rinf & tinf


def _mul_g(k):
    # k * G for 0 <= k < n by the comb: 31 doublings and 64 table additions whatever k is.
    # With K_b the 32-bit limbs of k, column c adds _T1[idx] (idx bit b = bit c of K_b, b < 4)
    # and _T2[idx'] (bit c of K_(b+4)), so R = sum 2^c (T1 + T2) = kG.
    # Exceptional additions: before each one R = sum_b A_b 2^(32b) G with 0 <= A_b < 2^32
    # and the entry is sum_b e_b 2^(32b) G with e_b in {0, 1}. R = -entry would need the
    # limb-wise k >> c (<= k < n) to be 0 mod n, and R = entry would need k = n + (a sum of
    # limb bits), k >= n; so for 0 <= k < n the mixed addition only meets the infinity cases,
    # which _pick masks. k = 0 (u1 in verification) returns infinity.
    t1 = _T1
    t2 = _T2
    X = 0
    Y = 0
    Z = 1
    inf = 1
    k2 = k >> 128
    for c in range(31, -1, -1):
        if c != 31:  # public: R is still infinity before the first column
            X, Y, Z = _dbl(X, Y, Z)
        i = (k >> c) & 1 | (k >> (c + 31)) & 2 | (k >> (c + 62)) & 4 | (k >> (c + 93)) & 8
        X, Y, Z, inf = _pick(i, t1, X, Y, Z, inf)
        i = (k2 >> c) & 1 | (k2 >> (c + 31)) & 2 | (k2 >> (c + 62)) & 4 | (k2 >> (c + 93)) & 8
        X, Y, Z, inf = _pick(i, t2, X, Y, Z, inf)
    return X, Y, Z, inf


def _table(x, y):
    # Affine j * Q for j = 1..15, packed x << 256 | y. (j-1)Q != +-Q for j >= 3 (Q has prime
    # order n), so the mixed additions are regular; one inversion for all (Montgomery's trick).
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
    out = [0] * 15
    for j in range(14, -1, -1):
        X, Y, Z = pts[j]
        zi = inv * acc[j] % _P  # 1 / Z_j
        inv = inv * Z % _P
        z2 = zi * zi % _P
        out[j] = (X * z2 % _P) << 256 | Y * z2 % _P * zi % _P
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
    # int2octets(x) || bits2octets(h1) || k', in a bytearray wiped after use (the int d and the
    # immutable HMAC inputs built from it are left to the GC: MicroPython cannot clear those).
    seed = bytearray(d.to_bytes(32, "big"))
    seed.extend((e % N).to_bytes(32, "big"))
    seed.extend(extra)
    V = b"\x01" * 32
    K = hmac_sha256(b"\x00" * 32, V + b"\x00" + seed)
    V = hmac_sha256(K, V)
    K = hmac_sha256(K, V + b"\x01" + seed)
    V = hmac_sha256(K, V)
    for i in range(len(seed)):
        seed[i] = 0
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
