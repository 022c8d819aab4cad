# Helper profile 2 (reconstructed; new enrolments use profile 4, qdid/polar.py): a code-offset
# fuzzy extractor (Juels-Wattenberg fuzzy commitment; the helper layout, secret, tag and errors
# are qdid.offset's) over a concatenated code: an outer binary BCH(255, 131, t = 18) code and an
# inner repetition code R = 7 (the construction of Boesch et al., CHES 2008, at the design point
# of Maes, "PUF-based key generation", 2013).
#
# Enrolment: m = 131 random bits; c = m(x) * g(x), a codeword of BCH(255, 131) (non-systematic:
# the codeword is uniform over the code, and nothing outside the code offset is stored);
# C = each of the 255 code bits repeated 7 times; helper w = x XOR C (public), where x is the
# 1785-bit SRAM response. Reconstruction: w XOR x' = C with the response noise on it; a majority
# of each bit's 7 copies gives a word at most t = 18 bit errors from c with the probability below;
# the BCH decoder (Berlekamp-Massey, Chien search) returns c, hence the enrolment response
# x = w XOR C exactly.
#
# Soft decisions do not pay here, measured: erasing the weak (4-3) votes and decoding with them
# all 0 and all 1 (binary errors-and-erasures decoding) left the failure rate at 20 % BER where it
# was (51 failures with it, 57 without, in 50000 trials each: noise), because about 31 of 255
# votes are weak at 20 % BER, close to the 36 erasures the code can take. The decoder is
# hard-decision only (docs/identity.md, section 2).
#
# Profile 2 layout: the response is X = (big-endian integer of the 224 bytes read) >> 7 (the last
# byte's low 7 bits unused); copy j of code bit i is bit 255 * j + i of X (bit 0 least
# significant), so the 7 copies of a code bit sit 255 cells apart (neighbouring
# cells share a word line and tend to fail together; spreading them keeps the errors of one code
# bit independent).
#
# Failure probability, exact for i.i.d. bit errors with rate p (host/puf/failure.py computes it,
# docs/identity.md derives it): an inner block is wrong with P_b = P(Bin(7, p) >= 4); the hard
# decoder fails iff more than 18 of the 255 blocks are wrong: P_k = P(Bin(255, P_b) >= 19).
#   p = 0.15: P_k = 5.4e-10;  p = 0.20: P_k = 1.05e-3 (Monte Carlo runs of this decoder agree:
#   tests/host/test_puf_failure.py, bench/puf_failure.py).
# Residual entropy: k = 131 bits of code dimension for 128 bits of secret; the helper leaks the
# response's bias, sum over the 255 blocks of I(c_i; w_i) (docs/identity.md; 0 at bias 0.5).
from micropython import const
from qdid import offset
from qdid.offset import (  # noqa: F401 (the profile's interface, as qdid.polar has it)
    HELPER_LEN,
    RESPONSE_LEN,
    KEY_LEN,
    RAW_BITS,
    HelperError,
    ReconstructionError,
    hamming_weight,
    stats,
)

PROFILE_REP7_BCH255 = const(2)  # helper profile ID
_R = const(7)  # repetitions per code bit (odd: the majority is defined)
_N = const(255)  # BCH code length
_K = const(131)  # BCH code dimension: key bits
_T = const(18)  # BCH error-correcting radius
_T2 = const(36)  # 2t syndromes
RADIUS = const(18)  # errors the BCH decoder corrects
MARGIN_MAX = const(18)  # stats["margin"] with no error: errors the decoder could still correct
_HEADER = bytes((PROFILE_REP7_BCH255, _R, _T, _K))  # profile, R, t, key bits

# g(x) of BCH(255, 131, 18) over GF(2^8) with x^8 + x^4 + x^3 + x^2 + 1: the product of the
# minimal polynomials of alpha^1..alpha^36 (degree 124; bit i = coefficient of x^i). Derived by
# host/puf/bch.py; tests check g(alpha^j) = 0 for j = 1..36 on the device.
GENERATOR = const(0x11BCB6CCE6906958AA17F2231050EB39)
_MASK_N = const((1 << 255) - 1)

# GF(2^8) tables, built once: _EXP has 510 entries so that _EXP[log a + log b] needs no
# reduction; _LOG[0] is unused.
_EXP = bytearray(510)
_LOG = bytearray(256)
_x = 1
for _i in range(255):
    _EXP[_i] = _x
    _EXP[_i + 255] = _x
    _LOG[_x] = _i
    _x <<= 1
    if _x & 0x100:
        _x ^= 0x11D
del _x, _i

# Buffers allocated once: the decoder's bit vector, syndromes and polynomials.
_work = offset._work  # the corrected response (secret material, zeroed after use)
_bits = bytearray(_N)
_syn = bytearray(_T2 + 1)
_lam = bytearray(_T2 + 2)
_prev = bytearray(_T2 + 2)
_tmp = bytearray(_T2 + 2)


def _gmul(a, b):
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def _encode(m):
    # c(x) = m(x) g(x) over GF(2): shift-and-add with a 0/1 multiplier instead of a branch on
    # key bits.
    c = 0
    for i in range(_K):
        c ^= (GENERATOR << i) * ((m >> i) & 1)
    return c


def _repeat(c):
    full = 0
    for j in range(_R):
        full |= c << (_N * j)
    return full


def _syndromes(y):
    # S_j = y(alpha^j) for j = 1..36: odd j directly (every position visited, a 0/-1 mask picks
    # the term, so the work does not depend on which bits are set), even j as squares
    # (S_2j = S_j^2 for binary words).
    bits = _bits
    for i in range(_N):
        bits[i] = 0xFF * ((y >> i) & 1)
    syn = _syn
    for j in range(1, _T2, 2):
        s = 0
        e = 0
        for i in range(_N):
            s ^= _EXP[e] & bits[i]
            e += j
            if e >= _N:
                e -= _N
        syn[j] = s
    for j in range(1, _T + 1):
        s = syn[j]
        syn[2 * j] = _EXP[2 * _LOG[s]] if s else 0


def _berlekamp_massey():
    # Error-locator polynomial Lambda from the 36 syndromes (Massey, IEEE Trans. IT-15, 1969):
    # returns its degree L. _lam holds Lambda (coefficient i at index i).
    syn = _syn
    lam = _lam
    prev = _prev
    tmp = _tmp
    for i in range(_T2 + 2):
        lam[i] = 0
        prev[i] = 0
    lam[0] = 1
    prev[0] = 1
    el = 0
    shift = 1
    b = 1
    for n in range(_T2):
        d = syn[n + 1]
        for i in range(1, el + 1):
            d ^= _gmul(lam[i], syn[n + 1 - i])
        if d == 0:
            shift += 1
            continue
        coef = _EXP[_LOG[d] + 255 - _LOG[b]]  # d / b
        if 2 * el <= n:
            tmp[:] = lam
            for i in range(_T2 + 2 - shift):
                lam[i + shift] ^= _gmul(coef, prev[i])
            el = n + 1 - el
            prev[:] = tmp
            b = d
            shift = 1
        else:
            for i in range(_T2 + 2 - shift):
                lam[i + shift] ^= _gmul(coef, prev[i])
            shift += 1
    return el


def _chien(el):
    # Roots of Lambda: position i is in error when Lambda(alpha^-i) = 0. Returns the error
    # pattern as an integer, or -1 when Lambda does not have el distinct roots among the 255
    # positions (more than t errors: decoding failure).
    lam = _lam
    reg = _tmp
    for k in range(el + 1):
        reg[k] = lam[k]
    err = 0
    found = 0
    for i in range(_N):
        s = 0
        for k in range(el + 1):
            s ^= reg[k]
        if s == 0:
            err |= 1 << i
            found += 1
        for k in range(1, el + 1):
            r = reg[k]
            if r:
                reg[k] = _EXP[_LOG[r] + 255 - k]  # times alpha^-k
    if found != el:
        return -1
    return err


def _bch_decode(y):
    # -> (codeword, number of corrected errors) or (-1, 0).
    _syndromes(y)
    el = _berlekamp_massey()
    if el > _T:
        return -1, 0
    err = _chien(el)
    if err < 0:
        return -1, 0
    return y ^ err, el


def _votes(y):
    # Majority of the 7 copies of every code bit, all 255 at once: a bit-sliced 3-bit counter
    # (c2 c1 c0) per code bit over the 7 rows; count >= 4 is exactly c2.
    c0 = c1 = c2 = 0
    for j in range(_R):
        r = (y >> (_N * j)) & _MASK_N
        t = c0 & r
        c0 ^= r
        t2 = c1 & t
        c1 ^= t
        c2 ^= t2  # cannot carry out: at most 7 rows
    return c2


def _codeword(m):
    return _repeat(_encode(m))


def _decode(y):
    # Majority votes, then the BCH decoder: -> (the repeated codeword, BCH errors, errors left).
    c, errs = _bch_decode(_votes(y))
    if c < 0:
        return -1, 0, 0
    return _repeat(c), errs, _T - errs


def enrol(response, key):
    # -> (helper bytes, 32-byte secret). key: 17 bytes from the DRBG (its low 131 bits are used),
    # response: >= 224 bytes of power-up SRAM.
    return offset.enrol(response, key, _HEADER, _codeword)


def reproduce(response, helper):
    # -> the 32-byte secret of enrolment, or ReconstructionError. Updates `stats`.
    return offset.reproduce(response, helper, _HEADER, _decode)
