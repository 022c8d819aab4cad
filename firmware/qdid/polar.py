# Code-offset fuzzy extractor, profile 4 (reconstructed; new enrolments use profile 5,
# qdid.debias): a punctured polar code under successive-cancellation decoding (qdid.polarsc, the
# decoder profile 5 shares). The helper layout, secret, tag and errors are qdid.offset's, shared
# with profile 2 (qdid.fuzzy).
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
# Channel LLRs: +1 / -1 for a read 0 / 1, 0 for a punctured position (qdid.polarsc decodes).
#
# Failure (host/puf/polar.py, exact discrete density evolution of this arithmetic; bounds that
# hold for every key: a tie decodes to 0, right for a 0 bit and wrong for a 1 bit):
#   15 % BER: 2.3e-15 <= P_key <= 1.7e-14;  20 % BER: 1.2e-9 <= P_key <= 1.3e-8.
#
# Helper (244 bytes): header 04 0b 1f 83 (profile 4, log2 N = 11, clip 31, 131 key bits), the
# 224-byte offset, a 16-byte tag. Profile 3 (the same code shortened at positions 1785..2047,
# 2.0e-6 at 20 % BER) is no longer read: its helpers are refused with a message to re-enrol.
from micropython import const
import micropython
from qdid import offset
from qdid import polarsc
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

# Decoder state, allocated once (4 KiB, qdid.polarsc's layout: the root at _B[0:N], the other
# levels above it). The word in and the codeword out (224 bytes, response layout) pass through
# _B[N:], free at those times. _B is zeroed after each use: it holds the response and the
# codeword.
_B = bytearray(2 * _N)


@micropython.viper
def _llr(buf):
    # Root LLRs from the word at buf[N:]: 0 at the punctured positions, 1 - 2 y_b at position
    # 263 + b, y_b = bit b + 7 of the big-endian 224-byte word (bit q = j - 256 at position j).
    B = ptr8(buf)
    j = 0
    while j < _P:
        B[j] = 0
        j += 1
    while j < _N:
        q = j - 256
        B[j] = 1 - 2 * ((int(B[_N + 223 - (q >> 3)]) >> (q & 7)) & 1)
        j += 1


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


def _header():
    return bytes((PROFILE_POLAR, _LOG_N, _CLIP, _K))


def _encode(m):
    # The 131 key bits -> the codeword on the read positions, as a 1785-bit integer.
    polarsc.encode(_B, _INFO_B, m.to_bytes(17, "big"), _N)
    _pack(_B)
    c = int.from_bytes(_B[_N : _N + _RESP], "big") >> 7
    polarsc.zero(_B, 2 * _N)
    return c


def _decode(y):
    # y: the received 1785 bits as an integer -> (the SC codeword, None, decoder margin).
    _B[_N : _N + _RESP] = (y << 7).to_bytes(_RESP, "big")
    _llr(_B)
    margin = polarsc.decode(_B, _R0, _N)
    _pack(_B)
    c = int.from_bytes(_B[_N : _N + _RESP], "big") >> 7
    polarsc.zero(_B, 2 * _N)
    return c, None, margin


def enrol(response, key):
    # -> (helper bytes, 32-byte secret). key: 17 bytes from the DRBG (its low 131 bits are used),
    # response: >= 224 bytes of power-up SRAM.
    return offset.enrol(response, key, _header(), _encode)


def reproduce(response, helper):
    # -> the 32-byte secret of enrolment, or ReconstructionError. Updates `stats`: margin is
    # the smallest |LLR| of an information decision (0 = a tie, 31 = saturated).
    return offset.reproduce(response, helper, _header(), _decode)
