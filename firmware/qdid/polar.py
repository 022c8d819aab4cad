# Code-offset fuzzy extractor, profile 4: a punctured polar code (Arikan, IEEE Trans. IT-55,
# 2009) under successive-cancellation decoding. The helper layout, secret, tag and errors are
# qdid.offset's, shared with profile 2 (qdid.fuzzy).
#
# Code: N = 2048, x = u F^(x)11 with F = [[1, 0], [1, 1]] in natural order (x_j = XOR of u_i over
# the i whose bits contain j's bits), punctured at positions 0..262 (quasi-uniform puncturing in
# natural order, Niu, Chen and Lin, ICC 2013): the 1785 response bits are code positions
# 263..2047 (response bit b = position 263 + b), the punctured positions are never read and
# enter the decoder with LLR 0. u_i for i < 263 reaches punctured positions only, so it is
# frozen with the rest; 131 information positions (INFO), chosen by exact density evolution of
# this decoder at 20 % BER (host/puf/polar.py; a host test checks INFO and _R0 against it).
# Restricted to the read positions the code still has dimension 131 (each information row keeps
# its own leading position i >= 263; host/puf/polar.py read_dimension()).
#
# Decoder: successive cancellation with clipped min-sum: channel LLR +1 / -1 for a read 0 / 1,
# 0 for a punctured position; f(a, b) = sign(a) sign(b) min(|a|, |b|);
# g(a, b, s) = clip(b + (1 - 2s) a, -31, 31); an information bit is 1 iff its LLR < 0. Signs,
# minima, clips and selections are arithmetic (shifts and masks), not branches: the decoder's
# branches and loop counts follow the public frozen set only, never the response or the key.
# It is viper code (native machine code: armv6m on the RP2040, xtensawin on the ESP32, x64 on
# the unix port) walking the decoding tree iteratively; the walk is a recursive SC decoder's.
#
# Failure (host/puf/polar.py, exact discrete density evolution of this arithmetic, union bound):
#   15 % BER: 5.3e-15 <= P_key <= 1.7e-14;  20 % BER: 2.1e-9 <= P_key <= 1.3e-8.
#
# Helper (244 bytes): header 04 0b 1f 83 (profile 4, log2 N = 11, clip 31, 131 key bits), the
# 224-byte offset, a 16-byte tag. Profile 3 (the same code shortened at positions 1785..2047,
# 2.0e-6 at 20 % BER) is no longer read: its helpers are refused with a message to re-enrol.
from micropython import const
import micropython
from qdid import offset
from qdid.offset import (  # noqa: F401 (the profile's interface, as qdid.fuzzy has it)
    HELPER_LEN,
    RESPONSE_LEN,
    KEY_LEN,
    RAW_BITS,
    HelperError,
    ReconstructionError,
    stats,
)

_TYPE_CHECKING = const(0)  # true for mypy only (mypy-firmware.ini); compiles to nothing here
if _TYPE_CHECKING:
    from micropython import ptr8  # a builtin inside @micropython.viper functions

PROFILE_POLAR = const(4)  # helper profile ID
_N = const(2048)  # mother code length
_LOG_N = const(11)
_P = const(263)  # punctured positions 0..262: never read, LLR 0
_K = const(131)  # information bits (key bits)
_CLIP = const(31)  # LLR saturation
_RESP = const(224)  # response bytes; response bit b = bit b + 7 of the big-endian integer
MARGIN_MAX = const(31)  # stats["margin"] with no error: the saturated |LLR|

# Information positions, bit i = u_i carries a key bit (host/puf/polar.py information_set()).
INFO = const(
    0xFFFFFFFEFFFEF880FFE8E880E8808000FEE8E880E8800000E000000000000000FEE8E80080000000800000000000000080000000000000000000000000000000F8808000800000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000E880800000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000
)

_INFO_B = INFO.to_bytes(_N // 8, "little")  # flag of position i: bit i & 7 of byte i >> 3

# Rate-0 nodes (no information position below them) decode to all zeros whatever their LLRs:
# the decoder skips them (Alamdar-Yazdi and Kschischang, "A simplified successive-cancellation
# decoder for polar codes", IEEE Comm. Letters 2011), which changes no decision. Node numbering:
# root 1, children 2n and 2n + 1, leaf of position i = N + i; bit n of _R0 (512 bytes), derived
# from INFO (host/puf/polar.py rate0_table(); a host and a device test check it).
_R0 = bytes.fromhex(
    "10177f07ff7f7f01ffffff7fff3f1701ffffffffffffff3fffffff1f7f171700ffffffffffffffffffffffff"
    "ffffff1fffffffffffffff17ff7f7f177f030100ffffffffffffffffffffffffffffffffffffffffffffffff"
    "ffffffffffffff17ffffffffffffffffffffffffffff7f17ffffff7fff7f7f03ff7f1f0117010100ffffffff"
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
    "ffffffffffffffffffffffffffff7f17ffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
    "ff7f7f17ffffffffffffff7fffffff7fff7f1f01ffffff3fff1717017f17170117000000ffffffffffffffff"
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f7f17ffffffffffffffffffffffff"
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
    "ffffff7fff7f7f07ffffffffffffffffffffffffffffff7fffffffffffffff7fffffff7fff171701ffffffff"
    "ffffff1fffff7f177f171701ff7f7f177f1717007f07010001000000"
)

# Decoder state, allocated once (4 KiB): the active node of each level, level l at offset
# 2N - (2N >> l) with N >> l entries (the root at 0, one leaf at 4094). An entry holds the
# node's LLR (int8) until the decoder has read it for the last time, then the node's re-encoded
# bit: a parent's first half takes its left child's bits in the same loop that reads the
# parent's LLRs for the right child, and the whole parent takes [left XOR right, right] once
# both children are done (every read precedes the write to the same entry). The word in and
# the codeword out (224 bytes, response layout) pass through _B[N:], free at those times.
# _B is zeroed after each use: it holds the response and the codeword.
_B = bytearray(2 * _N)


@micropython.viper
def _sc(buf, r0) -> int:
    # SC decoding of the word at buf[N:]: leaves the re-encoded codeword (one bit per position)
    # at the root and returns the smallest |LLR| of an information decision.
    # Node n of size sz at offset o; `down`: entering n, else n is decoded (its bits at o).
    B = ptr8(buf)
    R = ptr8(r0)
    # Root LLRs from the word at B[N:]: 0 at the punctured positions, 1 - 2 y_b at position
    # 263 + b, y_b = bit b + 7 of the big-endian 224-byte word (bit q = j - 256 at position j).
    j = 0
    while j < _P:
        B[j] = 0
        j += 1
    while j < _N:
        q = j - 256
        B[j] = 1 - 2 * ((int(B[_N + 223 - (q >> 3)]) >> (q & 7)) & 1)
        j += 1
    n = 1
    o = 0
    sz = _N
    down = 1
    margin = _CLIP
    while True:
        if down:
            if sz == 1:
                # An information leaf (frozen leaves are rate-0 nodes, never entered).
                v = int(B[o])
                v -= (v & 0x80) << 1
                s = v >> 7  # -1 iff v < 0
                B[o] = s & 1
                d = ((v ^ s) - s) - margin
                margin += d & (d >> 7)
                down = 0
                continue
            h = sz >> 1
            c = o + sz
            k = n << 1
            j = 0
            if (R[k >> 3] >> (k & 7)) & 1:
                # Left child rate 0: its bits are 0, and the right child's LLRs are g(a, b, 0).
                while j < h:
                    a = int(B[o + j])
                    a -= (a & 0x80) << 1
                    b = int(B[o + h + j])
                    b -= (b & 0x80) << 1
                    B[o + j] = 0
                    v = a + b
                    t = _CLIP - v
                    v += t & (t >> 7)  # min(v, 31)
                    t = v + _CLIP
                    v -= t & (t >> 7)  # max(v, -31)
                    B[c + j] = v
                    j += 1
                k += 1
            else:
                # Left child's LLRs: f(a, b) = sign(a) sign(b) min(|a|, |b|).
                while j < h:
                    a = int(B[o + j])
                    a -= (a & 0x80) << 1
                    b = int(B[o + h + j])
                    b -= (b & 0x80) << 1
                    s = (a ^ b) >> 7  # -1 iff the signs differ
                    t = a >> 7
                    a = (a ^ t) - t
                    t = b >> 7
                    b = (b ^ t) - t
                    t = a - b
                    b += t & (t >> 7)  # min(|a|, |b|)
                    B[c + j] = (b ^ s) - s
                    j += 1
            n = k
            o = c
            sz = h
            continue
        if n == 1:
            break
        h = sz
        p = o - 2 * sz
        j = 0
        if n & 1:
            # Right child done: parent bits = [left XOR right, right].
            while j < h:
                b = int(B[o + j])
                B[p + h + j] = b
                B[p + j] ^= b
                j += 1
            n >>= 1
            o = p
            sz = 2 * h
            continue
        k = n + 1
        if (R[k >> 3] >> (k & 7)) & 1:
            # Right child rate 0: parent bits = [left, 0].
            while j < h:
                B[p + j] = B[o + j]
                B[p + h + j] = 0
                j += 1
            n >>= 1
            o = p
            sz = 2 * h
            continue
        # Left child done: its bits into the parent's first half, and the right child's LLRs
        # g(a, b, s) = clip(b + (1 - 2s) a) with s the left bit.
        while j < h:
            a = int(B[p + j])
            a -= (a & 0x80) << 1
            b = int(B[p + h + j])
            b -= (b & 0x80) << 1
            s = int(B[o + j])
            B[p + j] = s
            s = 0 - s
            v = b + ((a ^ s) - s)
            t = _CLIP - v
            v += t & (t >> 7)
            t = v + _CLIP
            v -= t & (t >> 7)
            B[o + j] = v
            j += 1
        n = k
        down = 1
    return margin


@micropython.viper
def _pack(buf):
    # The read positions 263..2047 of buf's root (one bit per byte) -> the 224-byte word at
    # buf[N:] (response layout).
    B = ptr8(buf)
    j = 0
    while j < _RESP:
        B[_N + j] = 0
        j += 1
    j = _P
    while j < _N:
        q = j - 256
        i = _N + 223 - (q >> 3)
        B[i] = int(B[i]) | (int(B[j]) << (q & 7))
        j += 1


@micropython.viper
def _spread(sbuf, info, key):
    # u at sbuf's root: the 131 key bits (bit k of the big-endian 17-byte key, lowest first) at
    # the information positions, 0 elsewhere; then x = u F^(x)11 in place (stage s XORs
    # position j + 2^s into j for every j with bit s clear).
    S = ptr8(sbuf)
    F = ptr8(info)
    K = ptr8(key)
    k = 0
    i = 0
    while i < _N:
        f = (int(F[i >> 3]) >> (i & 7)) & 1
        S[i] = f & (int(K[16 - (k >> 3)]) >> (k & 7))
        k += f
        i += 1
    d = 1
    while d < _N:
        i = 0
        while i < _N:
            j = i
            while j < i + d:
                S[j] ^= S[j + d]
                j += 1
            i += 2 * d
        d <<= 1


@micropython.viper
def _zero(buf, n: int):
    B = ptr8(buf)
    j = 0
    while j < n:
        B[j] = 0
        j += 1


def _header():
    return bytes((PROFILE_POLAR, _LOG_N, _CLIP, _K))


def _encode(m):
    # The 131 key bits -> the codeword on the read positions, as a 1785-bit integer.
    _spread(_B, _INFO_B, m.to_bytes(17, "big"))
    _pack(_B)
    c = int.from_bytes(_B[_N : _N + _RESP], "big") >> 7
    _zero(_B, 2 * _N)
    return c


def _decode(y):
    # y: the received 1785 bits as an integer -> (the SC codeword, None, decoder margin).
    _B[_N : _N + _RESP] = (y << 7).to_bytes(_RESP, "big")
    margin = _sc(_B, _R0)
    _pack(_B)
    c = int.from_bytes(_B[_N : _N + _RESP], "big") >> 7
    _zero(_B, 2 * _N)
    return c, None, margin


def enrol(response, key):
    # -> (helper bytes, 32-byte secret). key: 17 bytes from the DRBG (its low 131 bits are used),
    # response: >= 224 bytes of power-up SRAM.
    return offset.enrol(response, key, _header(), _encode)


def reproduce(response, helper):
    # -> the 32-byte secret of enrolment, or ReconstructionError. Updates `stats`: margin is
    # the smallest |LLR| of an information decision (0 = a tie, 31 = saturated).
    return offset.reproduce(response, helper, _header(), _decode)
