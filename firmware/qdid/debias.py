# Helper profile 5 (new enrolments): von Neumann debiasing of SRAM cell pairs, then a code-offset
# fuzzy extractor with a polar code of length 1024 (decoder: qdid.polarsc, shared with profile 4).
# Maes, van der Leest, van der Sluis and Willems, "Secure key generation from biased PUFs",
# CHES 2015: classic von Neumann pair selection, with both cells of a pair voting at
# reconstruction (their pair-output variant). docs/identity.md derives everything below.
#
# Why: a plain code offset over biased cells leaks n - k bits' worth of the bias (profile 4:
# 1654 bits; at a population bias of 0.45 nothing of the 131 key bits would be left by the
# min-entropy bound). Of two independent cells with the same bias, 01 and 10 are equally likely
# whatever that bias is, so the first cell of a pair that reads 01 or 10 is a uniform bit, and
# which pairs read unequal says nothing about it: the selection can be public.
#
# Pairs: pair 8t + k is bit 7 - k of response bytes 2t and 2t + 1 (one bit lane of two
# neighbouring bytes): 2560 pairs in the 640 bytes read. Enrolment keeps the first 1024 unequal
# pairs (selection bitmap: bit 7 - k of byte t for pair 8t + k); retained bit u_j = the first
# cell of the j-th kept pair, the second cell read NOT u_j. A die whose 5120 cells read a share
# of ones outside 38-62 % is refused (DieBiasError): the failure bounds are stated, with margin,
# for population biases 0.31..0.69, and every die of real SRAM's 0.42..0.58 passes except with
# probability 2.8e-9 (host/puf/debias.py). Fewer than 1024 unequal pairs is refused too
# (probability 1.8e-13 at the window's edge).
#
# Code: N = 1024, x = u F^(x)10 in natural order (qdid.polarsc), 131 information positions
# (INFO) chosen by exact density evolution of the decoder at 20 % BER and bias 0.38; position j
# carries retained bit j. The helper's offset is w = u XOR x (128 bytes).
# Channel LLR of position j: (1 - 2 y1) / 2 + (1 - 2 y2) / 2 with y1 = first cell XOR w_j and
# y2 = NOT second cell XOR w_j: +1 when both cells vote 0, -1 when both vote 1, 0 when they
# disagree (an erasure).
#
# Failure (host/puf/debias.py; for every key): a cell that read 0 at enrolment flips with
# q0 = p / (2 (1 - b)), one that read 1 with q1 = p / (2 b) (p the read-to-read BER, b the
# population bias); a kept pair has one of each, so its LLR is -1 with q0 q1 and 0 with
# q0 + q1 - 2 q0 q1. Union bound at b = 0.42 (b = 0.5): 15 % BER 3.5e-16 (1.2e-16),
# 20 % BER 1.3e-9 (3.9e-10).
#
# Secret: SHA-256("qlink/fe/secret\0" || header || u) of the corrected retained bits; tag:
# HMAC-SHA256(secret, "qlink/fe/tag\0" || header || selection || offset) truncated to 128 bits
# (NIST SP 800-107 5.3.4). Helper (468 bytes): header 05 0a 1f 83 (profile 5, log2 N = 10, clip
# 31, 131 key bits), the 320-byte selection, the 128-byte offset, the 16-byte tag.
#
# Timing: enrolment's selection and every pass over cell values are shifts and masks; the
# branches and loop counts of reconstruction follow the public selection and frozen set only.
#
# RAM: decoder buffer 2 KiB, retained bits 128 B, tables 384 B, the helper (468 B) while it is
# built or read.
from micropython import const
import micropython
import hashlib
from qdid import QdidError
from qdid import polarsc
from qdid.hmac import hmac_sha256, compare_digest
from qdid.offset import (  # noqa: F401 (the profile's interface, as qdid.polar has it)
    SECRET_LABEL,
    TAG_LABEL,
    HelperError,
    ReconstructionError,
    failed,
    hamming_weight,
    stats,
)

_TYPE_CHECKING = const(0)  # true for mypy only (mypy-firmware.ini); compiles to nothing here
if _TYPE_CHECKING:
    from micropython import ptr8  # a builtin inside @micropython.viper functions

PROFILE_VN_POLAR = const(5)  # helper profile ID
RESPONSE_LEN = const(640)  # SRAM bytes read: 2560 cell pairs
RAW_BITS = const(2048)  # response bits the decoder reads (both cells of every kept pair)
KEY_LEN = const(17)  # bytes of random input to enrol(): the low 131 bits are the key
HELPER_LEN = const(468)  # _HDR + _SEL + _OFF + _TAG
MARGIN_MAX = const(31)  # stats["margin"] with no error: the saturated |LLR|
_CELLS = const(5120)  # cells read
_N = const(1024)  # kept pairs = code length
_LOG_N = const(10)
_K = const(131)  # information bits (key bits)
_CLIP = const(31)  # LLR saturation (qdid.polarsc)
_HDR = const(4)  # profile ID + 3 profile parameters
_SEL = const(320)  # selection bytes: one bit per pair
_OFF = const(128)  # offset bytes: one bit per kept pair
_W = const(324)  # offset position in the helper: _HDR + _SEL
_BODY = const(452)  # header + selection + offset: what the tag covers
_TAG = const(16)  # truncated HMAC-SHA256 tag (128 bits)
_SHARE_MIN_PCT = const(38)  # enrolment window on the share of ones, percent
_SHARE_MAX_PCT = const(62)

# Information positions, bit i = u_i carries a key bit (host/puf/debias.py information_set()).
INFO = const(
    0xFFFFFFFEFFFEFC80FFE8E880E8808000FEE8E880E8800000E800000000000000FEE8E800C0000000800000000000000080000000000000000000000000000000FE808000800000008000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000
)

_INFO_B = INFO.to_bytes(_N // 8, "little")  # flag of position i: bit i & 7 of byte i >> 3

# Rate-0 nodes of the decoding tree (qdid.polarsc: root 1, children 2n and 2n + 1, leaf of
# position i = N + i; bit n of _R0, 256 bytes), derived from INFO (host/puf/debias.py
# rate0_table(); a host and a device test check it).
_R0 = bytes.fromhex(
    "10073f01ff1f1701ffffff177f171700ffffffffffff7f17ff7f7f177f030100ffffffffffffffffffffffff"
    "ff7f7f17ffffff7fff7f7f03ff3f1f0117010100ffffffffffffffffffffffffffffffffffffffffffffffff"
    "ffffff7fff7f7f07ffffffffffffff7fffffff7fff7f1f01ffffff1fff1717017f17170117000000ffffffff"
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
    "ffffffffffffff7fffffff7fff7f7f01ffffffffffffffffffffffffffffff7fffffffffffffff7fffffff3f"
    "ff171701ffffffffffffff17ffff7f177f171701ff7f7f177f1717007f03010001000000"
)

# Allocated once: the decoder's buffer (qdid.polarsc's layout, root at _B[0:N]) and the retained
# bits u (secret material). Both are zeroed after each use.
_B = bytearray(2 * _N)
_u = bytearray(_OFF)


class DieBiasError(QdidError):
    # The die's power-up state is too biased for this profile's figures; enrolment refused.
    pass


@micropython.viper
def _select(resp, sel, u) -> int:
    # Enrolment: the first N pairs whose cells differ -> selection bitmap `sel` and their first
    # cells into `u` (zeroed, MSB first); returns how many were kept. Branch-free in the cells:
    # take = the pair differs and fewer than N were kept.
    R = ptr8(resp)
    S = ptr8(sel)
    U = ptr8(u)
    n = 0
    t = 0
    while t < _SEL:
        a = int(R[2 * t])
        d = a ^ int(R[2 * t + 1])
        m = 0
        k = 7
        while k >= 0:
            take = (d >> k) & ((n - _N) >> 15) & 1  # (n - N) >> 15 is -1 iff n < N
            m |= take << k
            i = (n & (_N - 1)) >> 3
            U[i] = int(U[i]) | (((a >> k) & take) << (7 - (n & 7)))
            n += take
            k -= 1
        S[t] = m
        t += 1
    return n


@micropython.viper
def _llr(buf, resp, helper) -> int:
    # Reconstruction: the channel LLR of every kept pair into buf[0:N] (int8); returns how many
    # pairs the selection marks (N in a well-formed helper; never more are written).
    B = ptr8(buf)
    R = ptr8(resp)
    H = ptr8(helper)
    n = 0
    t = 0
    while t < _SEL:
        m = int(H[_HDR + t])
        k = 7
        while k >= 0:
            if (m >> k) & 1:
                if n < _N:
                    w = int(H[_W + (n >> 3)]) >> (7 - (n & 7))
                    y1 = ((int(R[2 * t]) >> k) ^ w) & 1
                    y2 = ((int(R[2 * t + 1]) >> k) ^ w ^ 1) & 1
                    B[n] = 1 - y1 - y2
                n += 1
            k -= 1
        t += 1
    return n


@micropython.viper
def _xor_bits(buf, src, at: int, dst):
    # dst[i] = the bits buf[8i..8i+7] (one per byte, MSB first) XOR src[at + i], i < N / 8.
    B = ptr8(buf)
    S = ptr8(src)
    D = ptr8(dst)
    i = 0
    while i < _OFF:
        v = 0
        k = 0
        while k < 8:
            v = (v << 1) | (int(B[8 * i + k]) & 1)
            k += 1
        D[i] = v ^ int(S[at + i])
        i += 1


@micropython.viper
def _errors(resp, helper, u) -> int:
    # Cells of kept pairs that read otherwise than at enrolment (u, the corrected retained bits)
    # in the low 16 bits; kept pairs with at least one such cell above them.
    R = ptr8(resp)
    H = ptr8(helper)
    U = ptr8(u)
    cells = 0
    pairs = 0
    n = 0
    t = 0
    while t < _SEL:
        m = int(H[_HDR + t])
        k = 7
        while k >= 0:
            if (m >> k) & 1:
                if n < _N:
                    v = int(U[n >> 3]) >> (7 - (n & 7))
                    e1 = ((int(R[2 * t]) >> k) ^ v) & 1
                    e2 = ((int(R[2 * t + 1]) >> k) ^ v ^ 1) & 1
                    cells += e1 + e2
                    pairs += e1 | e2
                n += 1
            k -= 1
        t += 1
    return cells | (pairs << 16)


def _header():
    return bytes((PROFILE_VN_POLAR, _LOG_N, _CLIP, _K))


def _secret(hdr):
    # SHA-256 of the retained bits in _u, which are zeroed.
    h = hashlib.sha256(SECRET_LABEL)
    h.update(hdr)
    h.update(_u)
    polarsc.zero(_u, _OFF)
    return h.digest()


def enrol(response, key):
    # -> (helper bytes, 32-byte secret). key: 17 bytes from the DRBG (its low 131 bits are used),
    # response: >= 640 bytes of power-up SRAM.
    if len(key) != KEY_LEN:
        raise ValueError("key must be 17 bytes")
    if len(response) < RESPONSE_LEN:
        raise ValueError("response must be at least %d bytes" % RESPONSE_LEN)
    resp = memoryview(response)[:RESPONSE_LEN]
    ones = hamming_weight(resp)
    if ones * 100 < _SHARE_MIN_PCT * _CELLS or ones * 100 > _SHARE_MAX_PCT * _CELLS:
        permille = ones * 1000 // _CELLS
        raise DieBiasError(
            "SRAM power-up share of ones is %d.%d%%, outside the %d-%d%% this identity supports: "
            "the die is too biased for a 128-bit key (or the region was written before it was "
            "read); power-cycle and retry, and use another board if it persists"
            % (permille // 10, permille % 10, _SHARE_MIN_PCT, _SHARE_MAX_PCT)
        )
    sel = bytearray(_SEL)
    if _select(resp, sel, _u) < _N:
        polarsc.zero(_u, _OFF)
        raise DieBiasError(
            "fewer than %d of the SRAM's %d cell pairs read unequal at power-up: the die is too "
            "biased or too uniform to enrol; power-cycle and retry, and use another board if it "
            "persists" % (_N, _SEL * 8)
        )
    polarsc.encode(_B, _INFO_B, key, _N)
    w = bytearray(_OFF)
    _xor_bits(_B, _u, 0, w)  # the offset w = u XOR x
    polarsc.zero(_B, _N)
    hdr = _header()
    helper = hdr + sel + w
    secret = _secret(hdr)
    return helper + hmac_sha256(secret, TAG_LABEL + helper)[:_TAG], secret


def reproduce(response, helper):
    # -> the 32-byte secret of enrolment, or ReconstructionError. Updates `stats`:
    # corrected_bits = cells of kept pairs that read otherwise than at enrolment, code_errors =
    # kept pairs with such a cell, margin = the smallest |LLR| of an information decision
    # (0 = a tie, 31 = saturated).
    if len(helper) != HELPER_LEN:
        raise HelperError(
            "helper data is %d bytes, profile 5 reads %d; re-enrol the device"
            % (len(helper), HELPER_LEN)
        )
    hdr = _header()
    if bytes(helper[:_HDR]) != hdr:
        raise HelperError(
            "helper data profile %d is unknown to this firmware; re-enrol the device" % helper[0]
        )
    if len(response) < RESPONSE_LEN:
        raise ValueError("response must be at least %d bytes" % RESPONSE_LEN)
    ok = _llr(_B, response, helper) == _N  # another count: the selection was altered
    if ok:
        margin = polarsc.decode(_B, _R0, _N)
        _xor_bits(_B, helper, _W, _u)  # u = w XOR the decoded codeword
        errs = _errors(response, helper, _u)
        secret = _secret(hdr)
        mv = memoryview(helper)
        ok = compare_digest(hmac_sha256(secret, TAG_LABEL + mv[:_BODY])[:_TAG], mv[_BODY:])
    polarsc.zero(_B, 2 * _N)
    polarsc.zero(_u, _OFF)
    if not ok:
        raise failed()
    stats["corrected_bits"] = errs & 0xFFFF
    stats["code_errors"] = errs >> 16
    stats["margin"] = margin
    return secret
