# Code-offset fuzzy extractor, profile 3: a shortened polar code (Arikan, IEEE Trans. IT-55,
# 2009) under successive-cancellation decoding. Same interface as qdid.fuzzy (profile 2).
#
# Code: N = 2048, x = u F^(x)11 with F = [[1, 0], [1, 1]] in natural order (x_j = XOR of u_i over
# the i whose bits contain j's bits), shortened to the first 1785 positions: u_i = 0 for
# i >= 1785 forces x_j = 0 there (every i containing j is >= j), so those positions are known
# and never read. 131 information positions (INFO), chosen by exact density evolution of this
# decoder at 20 % BER (host/puf/polar.py; a host test checks the constant).
#
# Decoder: successive cancellation with clipped min-sum: channel LLR +1 / -1 for a read 0 / 1,
# +31 for a shortened position; f(a, b) = sign(a) sign(b) min(|a|, |b|);
# g(a, b, s) = clip(b + (1 - 2s) a, -31, 31); an information bit is 1 iff its LLR < 0. Signs
# and selections are arithmetic, not branches, so the work does not depend on the bits.
#
# Failure (host/puf/polar.py, exact discrete density evolution of this arithmetic, union bound):
#   15 % BER: 1.2e-12 <= P_key <= 5.8e-12;  20 % BER: 2.4e-7 <= P_key <= 2.0e-6.
#
# Helper (244 bytes): header 03 0b 1f 83 (profile 3, log2 N = 11, clip 31, 131 key bits), the
# 224-byte offset (1785 response bits XOR the codeword, same bit layout as profile 2: X = the
# big-endian integer of the 224 bytes >> 7, position j = bit j of X), a 16-byte tag as profile 2.
from micropython import const
import array
import hashlib
from qdid import QdidError
from qdid.hmac import hmac_sha256, compare_digest

PROFILE_POLAR = const(3)  # helper profile ID
_N = const(2048)  # mother code length
_LOG_N = const(11)
_REAL = const(1785)  # positions read from the SRAM; the rest are shortened (known 0)
_K = const(131)  # information bits (key bits)
_CLIP = const(31)  # LLR saturation
_PAD = const(7)
_RESP = const(224)
_HDR = const(4)
_TAG = const(16)
HELPER_LEN = const(244)
RESPONSE_LEN = const(224)
KEY_LEN = const(17)
RAW_BITS = const(1785)
MARGIN_MAX = const(31)  # stats["margin"] with no error: the saturated |LLR|

# Information positions, bit i = u_i carries a key bit (host/puf/polar.py information_set()).
INFO = const(
    0x1FEFEE8FEE8E880FEE8E80080000000FEC08000800000008000000000000000FFFEFEE0FC808000E880800080000000E88000000000000000000000000000008000000000000000000000000000000000000000000000000000000000000000FEE8E880E8000000800000000000000080000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000
)

_SECRET_LABEL = b"qlink/fe/secret\x00"
_TAG_LABEL = b"qlink/fe/tag\x00"

_INFO_B = INFO.to_bytes(_N // 8, "little")  # flag of position i: bit i & 7 of byte i >> 3

# Decoder state, allocated once: LLRs and re-encoded bits of the active node at each level
# (level l holds N >> l entries), 8 KiB in all; _work holds the corrected response.
_LL = [array.array("b", bytes(_N >> lvl)) for lvl in range(_LOG_N + 1)]
_SS = [bytearray(_N >> lvl) for lvl in range(_LOG_N + 1)]
_pos = [0, _CLIP]  # next leaf index, smallest |LLR| of an information decision

# Rate-0 nodes (no information position below them) decode to all zeros whatever their LLRs:
# the decoder skips them (Alamdar-Yazdi and Kschischang, "A simplified successive-cancellation
# decoder for polar codes", IEEE Comm. Letters 2011), which changes no decision. Node numbering:
# root 1, children 2n and 2n + 1, leaf of position i = N + i; bit n of _R0 (512 bytes), derived
# from INFO (a device test recomputes it): precomputed, as the loop costs more than a decode.
_R0 = bytes.fromhex(
    "10873fc1ff1f17f0ffffff177f0701ffffffffffffff7f17ff7f7f011701ffffffffffffffffffffffffffff"
    "ff7f7f07ffffff7fff3f17017f171700ffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
    "ffffff7fff7f3f01ffffffffffffff7fffffff1f7f171701ff7f7f177f030180ffffffffffffffffffffffff"
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
    "ffffffffffffff7fffffff7fff1f1701ffffffffffffffffffffffffffffff7fffffffffffffff17ff7f7f17"
    "7f170300ffffff7fff7f7f07ff7f1f01170101e0ffffffffffffffffffffffffffffffffffffffffffffffff"
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
    "ffffffffffffffffffffffffffffff7fffffffffffffff7fffffff177f171701ffffffffffffffffffffffff"
    "ffffffffffffffffffffffffffffffffffffff7fffffffffffffffffffffffffffff7f17ffffff7fff7f7f17"
    "ff7f7f031f010100ffffffffffffff7fffffff7fff7f3f01ffffff7fff1717017f171701170101feffffffff"
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
)
_work = bytearray(_RESP)

_POP = bytes(bin(i).count("1") for i in range(256))

stats = {"corrected_bits": 0, "code_errors": 0, "margin": 0}


class ReconstructionError(QdidError):
    # The response does not reproduce the enrolled secret: the tag over the helper does not match.
    pass


class HelperError(QdidError):
    # The helper data is not a profile this firmware knows, or has the wrong length.
    pass


def _header():
    return bytes((PROFILE_POLAR, _LOG_N, _CLIP, _K))


def _popint(v, nbytes):
    n = 0
    for b in v.to_bytes(nbytes, "big"):
        n += _POP[b]
    return n


def _transform(u):
    # x = u F^(x)11 on integers (bit j = position j): stage s XORs position j + 2^s into j for
    # every j with bit s clear.
    x = u
    for s in range(_LOG_N):
        d = 1 << s
        mask = (1 << d) - 1
        width = 2 * d
        while width < _N:
            mask |= mask << width
            width *= 2
        x ^= (x >> d) & mask
    return x


def _encode(m):
    # The 131 key bits, lowest first, into the information positions, then the transform.
    u = 0
    k = 0
    for i in range(_N):
        f = (_INFO_B[i >> 3] >> (i & 7)) & 1
        u |= (((m >> k) & 1) * f) << i
        k += f
    return _transform(u)


_ZERO = bytes(_N // 2)


def _zero(sc, h):
    sc[:h] = memoryview(_ZERO)[:h]
    _pos[0] += h


def _sc(lvl, node):
    # Decode the node whose LLRs are in _LL[lvl]; leave its re-encoded bits in _SS[lvl].
    lp = _LL[lvl]
    sp = _SS[lvl]
    if lvl == _LOG_N:
        i = _pos[0]
        _pos[0] = i + 1
        v = lp[0]
        sp[0] = (v >> 7) & 1  # only information leaves are visited (frozen ones are rate 0)
        _pos[1] = min(_pos[1], abs(v))
        return
    h = len(lp) >> 1
    lc = _LL[lvl + 1]
    sc = _SS[lvl + 1]
    n = 2 * node
    if (_R0[n >> 3] >> (n & 7)) & 1:
        _zero(sc, h)
    else:
        for j in range(h):
            a = lp[j]
            b = lp[j + h]
            lc[j] = (((a ^ b) >> 7) | 1) * min(abs(a), abs(b))
        _sc(lvl + 1, n)
    n += 1
    if (_R0[n >> 3] >> (n & 7)) & 1:
        sp[:h] = memoryview(sc)[:h]
        _zero(sc, h)
    else:
        for j in range(h):
            s = sc[j]
            sp[j] = s
            v = lp[j + h] + (1 - 2 * s) * lp[j]
            lc[j] = max(-_CLIP, min(_CLIP, v))
        _sc(lvl + 1, n)
    # Parent bits: [left XOR right, right]; the copy is a slice (no allocation), the XOR a loop.
    sp[h : 2 * h] = memoryview(sc)[:h]
    for j in range(h):
        sp[j] ^= sc[j]


def _decode(y):
    # y: the 1785 received bits as an integer -> the nearest codeword by SC, as an integer.
    root = _LL[0]
    yb = y.to_bytes(_N // 8, "little")
    for j in range(_REAL):
        root[j] = 1 - 2 * ((yb[j >> 3] >> (j & 7)) & 1)
    for j in range(_REAL, _N):
        root[j] = _CLIP
    _pos[0] = 0
    _pos[1] = _CLIP
    _sc(0, 1)
    s = _SS[0]
    out = bytearray(_N // 8)
    for j in range(_REAL):
        out[j >> 3] |= s[j] << (j & 7)
    return int.from_bytes(out, "little")


def _finish(helper_body, hdr):
    h = hashlib.sha256(_SECRET_LABEL)
    h.update(hdr)
    h.update(_work)
    secret = h.digest()
    for i in range(_RESP):
        _work[i] = 0
    tag = hmac_sha256(secret, _TAG_LABEL + hdr + helper_body)[:_TAG]
    return secret, tag


def _response_int(response):
    if len(response) < _RESP:
        raise ValueError("response must be at least %d bytes" % _RESP)
    return int.from_bytes(bytes(response[:_RESP]), "big") >> _PAD


def enrol(response, key):
    # -> (helper bytes, 32-byte secret). key: 17 bytes from the DRBG (its low 131 bits are used).
    if len(key) != KEY_LEN:
        raise ValueError("key must be 17 bytes")
    x = _response_int(response)
    hdr = _header()
    m = int.from_bytes(bytes(key), "big") & ((1 << _K) - 1)
    w = x ^ _encode(m)
    m = 0
    body = (w << _PAD).to_bytes(_RESP, "big")
    _work[:] = (x << _PAD).to_bytes(_RESP, "big")
    x = 0
    secret, tag = _finish(body, hdr)
    return hdr + body + tag, secret


def _parse(helper):
    if len(helper) != HELPER_LEN:
        raise HelperError(
            "helper data is %d bytes, profile 3 has %d; re-enrol the device"
            % (len(helper), HELPER_LEN)
        )
    if bytes(helper[:_HDR]) != _header():
        raise HelperError("helper data profile is unknown to this firmware; re-enrol the device")
    mv = memoryview(helper)
    return mv[:_HDR], mv[_HDR : _HDR + _RESP], mv[_HDR + _RESP :]


def reproduce(response, helper):
    # -> the 32-byte secret of enrolment, or ReconstructionError. Updates `stats`: margin is
    # the smallest |LLR| of an information decision (0 = a tie, 31 = saturated).
    hdr, body, tag = _parse(helper)
    x = _response_int(response)
    w = int.from_bytes(bytes(body), "big") >> _PAD
    y = x ^ w
    c = _decode(y)
    _work[:] = ((w ^ c) << _PAD).to_bytes(_RESP, "big")
    secret, want = _finish(body, hdr)
    if not compare_digest(want, tag):
        stats["corrected_bits"] = 0
        stats["code_errors"] = 0
        stats["margin"] = -1
        raise ReconstructionError(
            "SRAM response does not match this device's helper data (too noisy, helper altered, "
            "or another chip); power-cycle and retry, re-enrol if it persists"
        )
    n = _popint(y ^ c, _RESP)
    stats["corrected_bits"] = n
    stats["code_errors"] = n
    stats["margin"] = _pos[1]
    return secret
