# NIST P-256 (FIPS 186-5, SP 800-186 section 3.2.1.3): keys, ECDSA with RFC 6979 nonces, ECDH.
#
# Scalars are ints, points travel as 65-byte SEC1 uncompressed encodings (0x04 || X || Y) and
# signatures as 64-byte r || s, big-endian.
#
# Arithmetic: Jacobian coordinates (X, Y, Z) <-> (X/Z^2, Y/Z^3), the a = -3 doubling formula and
# mixed Jacobian + affine addition; the last step of a scalar multiplication adds with the
# complete formula of Renes, Costello and Batina (EUROCRYPT 2016) in homogeneous projective
# coordinates (X/Z, Y/Z), and one field inversion (Fermat, x^(p-2) by 4-bit windows: _pow)
# ends the work. Additions and subtractions are left unreduced; each product is reduced once
# with % _P, which on MicroPython's mpz costs less than reducing after every step.
#
# Secret scalars (key generation, signing, ECDH) cost the same whatever their value.
# MicroPython's big ints are not constant-time: an operation costs what its operands' digit
# counts say (16-bit digits on the boards and on the unix port), multiplying or masking by 0 is
# nearly free, a result that fits a small int becomes one, and every result is a heap
# allocation of its digits, so the garbage collector's work follows the lengths too. Nothing
# may follow the secret through a branch, a table index, the point at infinity, a zero table
# entry or the length of a value:
# - Recoding (_mul): k' = k when k is odd, n - k when it is even (the result is negated at the
#   end), and c = (k' + 2^256 - 1) / 2, so that k' = sum_i (2 c_i - 1) 2^i: 256 digits +-1,
#   none 0. c lies in [2^255, 2^256) for every k, and the choice between k and n - k is made on
#   k + 4n and 9n - (k + 4n), which also have one length for every k; the digits are read from
#   the bytes of c as small ints.
# - k G: a comb of 8 teeth 32 bits apart in two tables of 4 (Lim-Lee) on those digits
#   (Hedabou, Pinel and Beneteau 2005): a column's sum_t b_t 2^(32t) G is
#   b_3 (G_3 + sum_(t<3) b_3 b_t G_t), one of 8 non-zero table points, negated or not.
#   31 doublings, 64 additions. k Q: windows of 4 digits, 2u - 15 for a window's 4 bits u, an
#   odd digit from a table of Q, 3Q, ..., 15Q. 252 doublings, 64 additions.
# - No addition meets the point at infinity or an exceptional case before the last step
#   (proof beside _mul); the last step's additions are complete.
# - _pick scans the whole table; each step blends the kept and the scanned entry with masks 0
#   and -1 (one of each, whichever entry is picked), and the sign goes in as
#   y (1 - s) + (9p - y) s. Entries hold -x and -y as 5p - x and 5p - y: every coordinate that
#   enters a product has one digit count, a peer key's short one too, and _madd, taking the
#   point negated, adds non-negative terms where it would subtract.
# - Every % has a non-negative dividend (a signed sum of products gets _W, a multiple of p,
#   added): MicroPython's % of a negative value allocates a digit more. With factors of one
#   length and signs fixed, the allocations of a multiplication are the same for every scalar,
#   and so are the heap's layout and the collections (where they differed, the allocator's and
#   the collector's work moved by 1 % of an operation).
# - Randomised projective coordinates (Coron 1999): R starts at (x lam^2, y lam^3, lam), lam
#   from SHA-256 over c and the operation's public input (digest, peer key). The costs that
#   still follow values then follow lam, which nobody predicts without the key. ECDSA's output
#   stays RFC 6979's: lam changes the representation only.
# - s = (k b)^-1 (e b + (r b) d) with a blinding b from the same hash: a short k or a short
#   e + r d would make a product cheaper; k and d enter as k + 4n and d + 4n.
# - A peer point with x = 0 keeps X = 0 in every projective form; ECDH takes (d / 2) (2Q).
# What is left follows values, not the scalar: a square of a random value below 2^248 is one
# digit short (0.4 % of squares), a value below 2^240 likewise (2^-16), a quotient digit of mpz
# division needs a correction now and then; about 0.1 % of an operation (standard deviation
# over scalars, unix port, 64 KiB heap), driven by lam. The range checks and the first
# addition on the caller's int loop over its digits (a few dozen instructions).
# bench/p256_spread.py counts the instructions over extreme scalars, tests/attacks/
# test_p256_timing.py holds the spread below 1 %, tests/firmware/test_p256_constant.py the
# allocations.
from micropython import const
import hashlib
from qdid.hmac import hmac_sha256

_P = const(0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF)  # field prime
_B = const(0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B)  # curve b (a = -3)
N = const(0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551)  # group order
_NM2 = const(0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC63254F)  # n - 2
_PM2 = const(0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFD)  # p - 2
_B3 = const(0x1052A18AFEAFBBB61BC3380063C994352F57141164FB12E2B36AB4BA777720E2)  # 3b mod p
_N4 = const(4 * N)  # k + 4n for k in [0, n): in [4n, 5n), one digit count
_K4 = const(4 * N - (1 << 256) + 1)  # k' + 4n - _K4 = k' + 2^256 - 1
_P5 = const(5 * _P)  # 5p - x for x in [0, p): in (4p, 5p], one digit count
_P9 = const(9 * _P)  # 9p - (5p - y) = 4p + y, the negation in the same range
_SH = const(288)  # x of a packed entry sits above bit 288 (a multiple of 16 and 32)
_MY = const((1 << 288) - 1)  # y of a packed entry
_W = const(_P << 264)  # a multiple of p above 9 p^2: keeps a signed sum of products positive

# Fixed-base comb tables: entry j of _T1 is the affine point (x, y) = G_3 + sum_(t<3) (+-G_t)
# with G_t = 2^(32t) G and + when bit t of j is set; _T2 the same with G_t = 2^(32(t+4)) G.
# Packed as (5p - x) << 288 | (5p - y) (see _pick); the device test
# test_comb_tables_match_generator recomputes them from G.
_T1 = (
    0x4971FA24C1CF77DBABD86AE8A5E9E6A29036D2E2FFCA85816F1B290CE99ECF5F200000004C0FFC6A8469158E0264BA825D29F04924152BEDCA9D785DC8DD95953EA82B748,  # noqa: E501
    0x4A9F2C89EEDAA3DA972D2DC70FC0890677CB41F51A3127398CB4BE0F9D8554D460000000457BF2EC829EF5CA1684422565EACA48EAD0374C98299604557A10D9AC183F077,  # noqa: E501
    0x414D9A6F26DCCD275D255B66F9BDC029EDC9BEE801EDC3BBAE6DF8CE83B6203040000000465A6A9396749C642239B397DAD2D73398B3D6BD3BB4874D9BE278291F5A0AC7D,  # noqa: E501
    0x440F4318F0E03DF81F04FAE66368E4AEFBE5F121DCDFC587F89220253EC727E0400000004C34CA54934EC2316B4AD02499DBB90160923E919214A0E1D4B54A34AD483FEB9,  # noqa: E501
    0x4627C999F2DC4FD7C9D45DFCA99CD4AB8E4AA1AA88EA22DAC2C7C5234347FA7D9000000041209D37BEA1A7361F8FC56D5890ED6E3A77694E587DD93BEF48B418C79AC4486,  # noqa: E501
    0x4FFBA86086555C68E99E9848F535838C938DA6FB8F99B3498A7D21F60D86E81990000000433CC943E8135B61DC573493FCE22A765807A4D5D16F6B1BF0D218903FC34FF67,  # noqa: E501
    0x4CAEED5ACDD1C66C604DC29EFE8067238C440185BF75389B6A856D01ABBC23DD5000000041235786E88FE78105C649F6858EF5EA46738D0CD730F2D56D66E42DD7AA28032,  # noqa: E501
    0x41FE75558DF795B98D967BC0E94B86A842797B73CB89F3BE15068D4BA0DEA66D300000004C7C0B24A80EF11B40D01779C45F2437C2C927751B0128446DE5FCCDD66967BDB,  # noqa: E501
)
_T2 = (
    0x4C46676A660EF6F3FA18D0E7092AFED26DBA9071C10358E25877567EF2998479E00000004A93DD37EBB30AD071A4458567BBC73505189920F603CA7DAFAA992C785B82C4E,  # noqa: E501
    0x4EA37A06DDFBF3A7DE04349B842D1F82F39B6250E37F1E0CF2F4341A5D19A27C4000000042E790801E2ABD47A11F9BCD0C27B158836DC9435942932CCC7A0741827288CB4,  # noqa: E501
    0x47CE2D9DE1F855ADB1C1B3242FA732BF46422E435D0CFB51B6C1C32A3910609520000000485E6AA0F03C14C246DA2E2AAF44B9FCFD733B27542D2CA4C84833D21E0B1CA69,  # noqa: E501
    0x426BF5D9C6B711F1A2CB363A5A01AB709D7FC867EAA21EB54D5892BBB12E33248000000048ACBB8520E160070BCBF91B48BB150C8BF70CE8F70F656A54DC2A80D552BD7AF,  # noqa: E501
    0x42E99B179824EC98C10779E4F2ABFE0A2ECAE873C3C5BE395EB0DABB97F4F8EBD00000004CC33498446A3E32DAE11AD8EB28792C343AF59B3FE98A5189A5134A46F2DB547,  # noqa: E501
    0x4D45E88B7022FDA901F3E36C03BC0827562C4423463AFE2ADF5077CC748F8730E0000000471D88C23030A4136016681CBEC0B8BC9CCFB89B78E32C627F47B2DB533094E41,  # noqa: E501
    0x40D3489E40BAB5D594648E50476A5B51119D111431118FAA1787966658D3D5DEC00000004EF6A6738B4C1A01929891205CA0A0F97B2AD308FAFFD66560978BF2CD53FF486,  # noqa: E501
    0x497E294184DA9853F621E17189F7F1F07252092363952AA0EE434C95A8435F43A00000004E20354683B7F7811D9C0DE9930EB1E4FD59589961A786F0E214E122B89C0B030,  # noqa: E501
)


def _dbl(X, Y, Z):
    # dbl-2001-b (Bernstein-Lange EFD, a = -3) with 3 (X - Z^2)(X + Z^2) as 3 (X^2 - Z^4) and
    # 2 Y Z for Z3: 3M + 6S, every product of reduced factors. Y = 0 never occurs: the group
    # has odd order, so no point of order 2.
    d = Z * Z % _P
    g = Y * Y % _P
    b = X * g * 4 % _P
    a = (X * X + _W - d * d) * 3 % _P
    X3 = (a * a - 2 * b) % _P
    return X3, (a * (b - X3) + _W - g * g * 8) % _P, Y * Z * 2 % _P


def _madd(X1, Y1, Z1, x, y):
    # madd-2004-hmv (EFD): Jacobian + affine, 8M + 3S, for the affine point (-x, -y) (a
    # table entry as _pick gives it). Then h and r are the formula's -H and -R, each a sum of
    # non-negative terms, and the result is (X3, -Y3, -Z3), the same point. Wrong (not a crash)
    # when the inputs are equal, opposite or at infinity; _mul shows why those cannot reach it.
    t1 = Z1 * Z1 % _P
    t2 = t1 * Z1 % _P
    h = (x * t1 + X1) % _P
    r = (y * t2 + Y1) % _P
    hh = h * h % _P
    hhh = hh * h % _P  # -H^3
    v = X1 * hh % _P
    X3 = (r * r + hhh - 2 * v) % _P
    return X3, (r * (v - X3) + _W - Y1 * hhh) % _P, Z1 * h % _P


def _add_complete(X, Y, Z, X1, Y1, Z1):
    # Renes-Costello-Batina 2016 (section 3.1, a = -3), homogeneous projective: right for any
    # two points, equal, opposite or at infinity (0 : 1 : 0).
    a = X * X1 % _P
    b = Y * Y1 % _P
    c = Z * Z1 % _P
    e = (X * Y1 + X1 * Y) % _P
    f = (X * Z1 + X1 * Z) % _P
    g = (Y * Z1 + Y1 * Z) % _P
    h = c * _B3 % _P
    u = (b + f * 3 + _P - h) % _P  # b + 3f - 3bc
    w = (b + h + (_P - f) * 3) % _P  # b - 3f + 3bc
    v = (f * _B3 + (_P - a) * 3 + (_P - c) * 9) % _P  # 3bf - 3a - 9c
    t = (a + _P - c) * 3 % _P
    return (e * u + (_P - g) * v) % _P, (w * u + t * v) % _P, (g * w + e * t) % _P


def _pick(tbl, k, e):
    # Entry k of an 8-entry packed table, negated when e = 1, as (5p - x, 5p -+ y) (in
    # (4p, 5p], one length whatever x, y are; _madd takes the point negated), at one cost for
    # every k and e: each step keeps one operand whole (mask -1) and clears the other (mask 0).
    a = tbl[0]
    for i in range(1, 8):
        m = ((i ^ k) - 1) >> 8  # -1 when i == k, else 0 (i ^ k < 8)
        a = a & ~m | tbl[i] & m
    y = a & _MY
    return a >> _SH, y * (1 - e) + (_P9 - y) * e


def _table(x, y):
    # Q, 3Q, ..., 15Q affine, packed. Q is public (a validated peer key or the verification's
    # public key), so this part may take its time from Q. One inversion for all (Montgomery).
    X2, Y2, Z2 = _add_complete(x, y, 1, x, y, 1)
    pts = [(x, y, 1)] * 8
    acc = [1] * 8  # acc[j]: the product of the Z of points 0..j-1
    for j in range(7):
        X, Y, Z = pts[j]
        acc[j + 1] = acc[j] * Z % _P
        pts[j + 1] = _add_complete(X, Y, Z, X2, Y2, Z2)
    a = _pow(acc[7] * pts[7][2] % _P, _PM2, _P)
    for j in range(7, -1, -1):
        X, Y, Z = pts[j]
        zi = a * acc[j] % _P  # 1 / Z_j
        a = a * Z % _P
        acc[j] = (_P5 - X * zi % _P) << _SH | _P5 - Y * zi % _P
    return acc


def _mul(k, extra, tbl):
    # k B for k in [1, n-1] as projective (X, Y, Z, h): tbl is (_T1, _T2) for B = G (the comb)
    # or (_table(Q),) for B = Q (windows). extra is the operation's public input: h =
    # SHA-256(label || c || extra) as an int gives lam and the caller's blinding (a hash with a
    # secret part as a PRF: its output is never shown, so length extension gives nothing).
    a = k + _N4  # [4n, 5n): one length for every k
    s = a & 1
    e = 1 - s  # 1: k even, k' = n - k
    c = ((a * s + (9 * N - a) * e - _K4) >> 1).to_bytes(32, "big")  # k' + 4n - _K4 = 2c
    h = int.from_bytes(hashlib.sha256(b"qlink/p256/blind\x00" + c + extra).digest(), "big")
    lam = h % (_P - 1) + 1
    steps, dbls, stride = (32, 1, 32) if len(tbl) == 2 else (64, 4, 1)
    # Step i (from the top) doubles R dbls times, then adds an entry of each table: table m's
    # by the digits b_t (t = 3..0) at bits i dbls + 128 m + t stride of c. As
    # sum_t b_t B_t = b_3 (B_3 + sum_(t<3) b_3 b_t B_t), the index has bit t set when
    # b_t = b_3 and the entry is negated when b_3 = -1; the tables hold B_3 + sum_(t<3) +-B_t
    # (bit t of the index: +B_t) with B_t = 2^(32t) G, 2^(32t+128) G (comb) or 2^t Q (windows:
    # 8Q + sum_(t<3) +-2^t Q = (2j + 1) Q for index j).
    # Exceptional cases: in multiples of G or Q, after step i R holds V = sum_j 2^(32j) A_j
    # (comb: 8 blocks) or V = A (windows), each block A = sum of b 2^(position - i dbls) over
    # the digits taken so far: odd, |A| < 2^(32-i) (comb) or 2^(256-4i) (windows). Before an
    # addition of step i < steps - 1, R is 2^dbls V (plus the first entry of the step, comb)
    # and the entry T has digits +-1 where R's blocks are even (or none in the lowest block):
    # R -+ T has an odd lowest block, so it is not 0, and |R -+ T| < 2^255 (comb) or 2^252
    # (windows) for i >= 1, below n: R is neither T, -T nor infinity and madd is right. The
    # first step starts R at its entry. Step 0 may reach n (R = +-T for a handful of k near n:
    # n - 2 with the windows, test_p256.py names one for the comb): its additions are complete.
    X = Y = Z = 0  # set by the first step
    for i in range(steps - 1, -1, -1):
        if i < steps - 1:  # public: R is empty before the first step
            for _ in range(dbls):
                X, Y, Z = _dbl(X, Y, Z)
            if not i:
                X, Y, Z = X * Z % _P, Y, Z * Z % _P * Z % _P  # Jacobian -> projective
        for m in range(len(tbl)):
            v = 0
            for t in range(3 * stride, -1, -stride):
                q = i * dbls + 128 * m + t
                v = v << 1 | c[31 - (q >> 3)] >> (q & 7) & 1
            s = 1 - (v >> 3)  # 1: b_3 = -1
            x, y = _pick(tbl[m], (v ^ 7 * s) & 7, s)
            if i == steps - 1 and not m:  # (-x, -y) as (x lam^2, y (-lam)^3, -lam)
                X = lam * lam % _P
                X, Y, Z = _P - x * X % _P, y * X % _P * lam % _P, _P - lam
            elif i:
                X, Y, Z = _madd(X, Y, Z, x, y)
            else:
                X, Y, Z = _add_complete(X, Y, Z, _P5 - x, _P9 - y, 1)
    return X, Y * (1 - e) + (_P - Y) * e, Z, h  # -R when k' = n - k


def _pow(x, e, m):
    # x^e mod m for a public e (p - 2 or n - 2: Fermat inverses), 4-bit windows from the top
    # over x^0..x^15: about 310 products where pow() takes 384 (p - 2) or 446 (n - 2).
    t = [1] * 16
    for i in range(1, 16):
        t[i] = t[i - 1] * x % m
    r = t[e >> 252]
    for i in range(248, -1, -4):
        for _ in range(4):
            r = r * r % m
        if e >> i & 15:  # public: a bit of the exponent
            r = r * t[e >> i & 15] % m
    return r


def _affine(X, Y, Z):
    # Projective (X : Y : Z) -> (X/Z, Y/Z).
    Z = _pow(Z, _PM2, _P)
    return X * Z % _P, Y * Z % _P


def _is(v, n):
    return isinstance(v, (bytes, bytearray)) and len(v) == n


def _decode(pub65):
    # SEC1 2.3.4 with the SP 800-56A 5.6.2.3.3 partial check: uncompressed form only,
    # coordinates in [0, p-1], y^2 = x^3 - 3x + b. Infinity has no 65-byte encoding.
    # The cofactor is 1, so a point on the curve has order n. Returns None when invalid.
    if not _is(pub65, 65) or pub65[0] != 4:
        return None
    x = int.from_bytes(pub65[1:33], "big")
    y = int.from_bytes(pub65[33:65], "big")
    if x >= _P or y >= _P:
        return None
    if (y * y - (x * x - 3) * x - _B) % _P:
        return None
    return x, y


def _check(d, digest32=bytes(32)):
    # A private key in [1, n-1] and, when signing, a digest of 32 bytes.
    if not isinstance(d, int) or d < 1 or d >= N:
        raise ValueError  # private key out of [1, n-1]
    if not _is(digest32, 32):
        raise ValueError  # a SHA-256 digest is 32 bytes


def is_valid_public_key(pub65):
    return _decode(pub65) is not None


def public_key(d):
    _check(d)
    X, Y, Z, _ = _mul(d, b"", (_T1, _T2))  # not infinity: 0 < d < n
    x, y = _affine(X, Y, Z)
    return b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")


def scalar_from_seed(seed):
    # Hash to a scalar by rejection (FIPS 186-5 A.2.2 style): c = SHA-256(seed || counter), the
    # counter a 4-byte big-endian int from 0; the first c with 1 <= c <= n-1 is the key. A
    # rejection has probability about 2^-32, so the loop practically never runs twice.
    ctr = 0
    while True:
        h = hashlib.sha256(seed)  # no copy of the seed: update() takes the counter
        h.update(ctr.to_bytes(4, "big"))
        c = int.from_bytes(h.digest(), "big")
        if 0 < c < N:
            return c
        ctr += 1


def _sign(d, digest32, k):
    # FIPS 186-5 6.4.1 steps 4-8; returns None when r or s is 0 (the caller takes another k).
    X, Y, Z, h = _mul(k, digest32, (_T1, _T2))
    r = _affine(X, Y, Z)[0] % N
    if r == 0:
        return None
    # s = (k b)^-1 (e b + (r b) d) for the blinding b: every product has an operand of one
    # length (k + 4n, d + 4n) or one that looks random (b, k b, r b, (e + r d) b).
    b = h % (N - 1) + 1
    s = int.from_bytes(digest32, "big") * b + r * b % N * (d + _N4)
    s = _pow((k + _N4) * b % N, _NM2, N) * (s % N) % N
    if s == 0:
        return None
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def sign_digest_k(d, digest32, k):
    # ECDSA with a caller-chosen nonce, for the NIST SigGen vectors (which give k). Never use
    # it for real signatures: a repeated or biased k gives the private key away.
    _check(d, digest32)
    if not isinstance(k, int) or k < 1 or k >= N:
        raise ValueError  # nonce out of [1, n-1]
    sig = _sign(d, bytes(digest32), k)
    if sig is None:
        raise ValueError  # this k gives r = 0 or s = 0
    return sig


def sign_digest(d, digest32, extra=b""):
    # ECDSA (FIPS 186-5 6.4.1) with the nonce of RFC 6979 section 3.2 (HMAC-SHA256; qlen =
    # hlen = 256, so bits2int is a plain big-endian read). `extra` is the optional additional
    # data k' of RFC 6979 section 3.6 (e.g. DRBG output to hedge against faults); with the
    # default b"" the signature is exactly RFC 6979's.
    _check(d, digest32)
    digest32 = bytes(digest32)
    # sep || int2octets(x) || bits2octets(h1) || k' in a bytearray wiped after use (the int d
    # and the immutable HMAC inputs built from it are left to the GC: MicroPython cannot clear
    # those). The bytes of d come from d + 2^256, of one length for every d; its top byte is
    # the separator of steps d and f.
    seed = bytearray((d + (1 << 256)).to_bytes(33, "big"))
    seed += (int.from_bytes(digest32, "big") % N).to_bytes(32, "big")
    seed += extra
    K = bytes(32)
    V = b"\x01" * 32
    for i in range(2):  # steps d-g: K = HMAC_K(V || i || ...), V = HMAC_K(V)
        seed[0] = i
        K = hmac_sha256(K, V + seed)
        V = hmac_sha256(K, V)
    for i in range(len(seed)):
        seed[i] = 0
    while True:
        V = hmac_sha256(K, V)
        k = int.from_bytes(V, "big")
        if 0 < k < N:
            sig = _sign(d, digest32, k)
            if sig is not None:
                return sig
        # step 3.2 h.3: out of range or a zero r/s, derive the next candidate
        K = hmac_sha256(K, V + b"\x00")
        V = hmac_sha256(K, V)


def verify_digest(pub65, digest32, sig64):
    # ECDSA verification (FIPS 186-5 6.4.2). Every invalid input gives False: a bad key
    # encoding, a point off the curve, r or s outside [1, n-1], wrong lengths or types.
    # Everything here is public, so branches on values are fine.
    Q = _decode(pub65)
    if Q is None:
        return False
    if not (_is(digest32, 32) and _is(sig64, 64)):
        return False
    r = int.from_bytes(sig64[:32], "big")
    s = int.from_bytes(sig64[32:], "big")
    if not (0 < r < N and 0 < s < N):
        return False
    s = _pow(s, _NM2, N)
    X, Y, Z, _ = _mul(r * s % N, b"", (_table(Q[0], Q[1]),))  # u2 in [1, n-1]: n is prime
    s = int.from_bytes(digest32, "big") * s % N  # u1
    if s:  # u1 = 0 (e = 0 mod n): u1 G is infinity
        X1, Y1, Z1, _ = _mul(s, b"", (_T1, _T2))
        X, Y, Z = _add_complete(X, Y, Z, X1, Y1, Z1)
    # x(R) mod n == r (FIPS 186-5 6.4.2 step 9); Z = 0 is infinity, never accepted
    return Z != 0 and _affine(X, Y, Z)[0] % N == r


def ecdh(d, peer_pub65):
    # ECC CDH primitive (SP 800-56A 5.7.1.2): the x coordinate of d * Q, 32 bytes. The peer
    # key is fully validated first (cofactor 1), so the result is never infinity.
    _check(d)
    Q = _decode(peer_pub65)
    if Q is None:
        raise ValueError  # peer public key malformed or not on the curve
    x, y = Q
    if not x:  # public: a peer point with x = 0, which every projective form keeps at X = 0
        # While the key's leading digits hold R at +-Q, arithmetic on X = 0 is cheaper: take
        # (d / 2) (2Q) instead, whose prefixes never make R = +-Q.
        x, y = _affine(*_add_complete(x, y, 1, x, y, 1))
        d = (d + _N4) * ((N + 1) // 2) % N
    X, Y, Z, _ = _mul(d, bytes(peer_pub65), (_table(x, y),))
    return _affine(X, Y, Z)[0].to_bytes(32, "big")
