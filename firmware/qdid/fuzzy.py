# Code-offset fuzzy extractor (Dodis, Reyzin, Smith, "Fuzzy Extractors", EUROCRYPT 2004,
# section 5; Juels-Wattenberg fuzzy commitment) over a repetition code.
#
# Enrolment: k = 128 random bits; c = k repeated R times; helper w = response XOR c (public).
# Reconstruction: c' = response' XOR w = c with the response noise on it; a majority vote per key
# bit gives k, hence c, hence the enrolment response exactly = w XOR c. The secret is a
# domain-separated SHA-256 of that corrected response. A tag, HMAC-SHA256 keyed by the secret over
# the helper, makes a wrong reconstruction (too much noise, a tampered helper, another die) an
# error instead of another key.
#
# Profile 1: R = 31, interleaved: row j (16 bytes) of the response carries repetition j of the
# 16 key bytes, so the 31 copies of a key bit sit 128 cells apart (physically neighbouring cells
# share a word line and tend to fail together; spreading them keeps the errors of one key bit
# independent). 31 * 128 = 3968 response bits = 496 bytes of SRAM.
#
# Failure probability, exact for i.i.d. bit errors with rate p:
#   block (one key bit) fails when >= 16 of its 31 bits flip:
#     P_b = sum_{i=16..31} C(31,i) p^i (1-p)^(31-i)
#   key fails when any of the 128 blocks fails: P_k = 1 - (1 - P_b)^128
#   p = 0.0408 (unix silicon model defaults, 25 C; see boards/unix/silicon.py):
#     P_b = 9.85e-15, P_k = 1.26e-12
#   p = 0.081 (model at 85 C): P_b = 3.15e-10, P_k = 4.0e-8
#   p = 0.10: P_k = 8.8e-7; p = 0.15: P_k = 2.6e-4 (R = 15 would give 4.9e-6 already at 0.0408)
#
# Known limit of this first profile: the helper leaks the response's bias. With P(1) = b per cell,
# the key's remaining entropy given the helper is 128 bits at b = 0.5, 123.5 at 0.52, 103 at 0.55,
# 55.6 at 0.6 (sum over blocks of E[H(k_i | w_i)]). Real SRAM is close to 0.5; a debiasing step
# (or stable-cell selection with index helper data) is the next profile.
from micropython import const
import hashlib
from qdid import QdidError
from qdid.hmac import hmac_sha256, compare_digest

PROFILE_REP31 = const(1)  # helper profile ID: repetition code, R = 31, interleaved rows
_R = const(31)  # repetitions per key bit (odd: majority is defined)
_KEY = const(16)  # key bytes (k = 128 bits)
_RESP = const(496)  # response bytes used = _R * _KEY
_HDR = const(4)  # profile (1), R (1), key bits (2, big-endian)
_TAG = const(32)  # HMAC-SHA256 tag
HELPER_LEN = const(532)  # _HDR + _RESP + _TAG
RESPONSE_LEN = const(496)  # SRAM bytes the profile consumes

_SECRET_LABEL = b"qlink/fe/secret\x00"
_TAG_LABEL = b"qlink/fe/tag\x00"

# Buffers allocated once: the corrected response (secret material, zeroed after use) and the
# decoded key.
_work = bytearray(_RESP)
_key = bytearray(_KEY)

# Popcount of a byte, for the response health check.
_POP = bytes(bin(i).count("1") for i in range(256))


class ReconstructionError(QdidError):
    # The response does not reproduce the enrolled secret: the tag over the helper does not match.
    pass


class HelperError(QdidError):
    # The helper data is not a profile this firmware knows, or has the wrong length.
    pass


def _header():
    return bytes((PROFILE_REP31, _R, 0, _KEY * 8))


def hamming_weight(buf):
    n = 0
    for b in buf:
        n += _POP[b]
    return n


def _finish(helper_body, hdr):
    # _work holds the corrected response: hash it, tag the helper, wipe it.
    h = hashlib.sha256(_SECRET_LABEL)
    h.update(hdr)
    h.update(_work)
    secret = h.digest()
    for i in range(_RESP):
        _work[i] = 0
    tag = hmac_sha256(secret, _TAG_LABEL + hdr + helper_body)
    return secret, tag


def enrol(response, key):
    # -> (helper bytes, 32-byte secret). key: 16 bytes from the DRBG, response: >= 496 bytes.
    if len(key) != _KEY:
        raise ValueError("key must be 16 bytes")
    if len(response) < _RESP:
        raise ValueError("response must be at least %d bytes" % _RESP)
    hdr = _header()
    body = bytearray(_RESP)
    for j in range(_R):
        o = j * _KEY
        for b in range(_KEY):
            body[o + b] = response[o + b] ^ key[b]
            _work[o + b] = response[o + b]
    secret, tag = _finish(body, hdr)
    return hdr + bytes(body) + tag, secret


def _parse(helper):
    if len(helper) != HELPER_LEN:
        raise HelperError("helper data is %d bytes, profile 1 has %d" % (len(helper), HELPER_LEN))
    if helper[0] != PROFILE_REP31 or helper[1] != _R or helper[2] != 0 or helper[3] != _KEY * 8:
        raise HelperError("helper data profile is unknown to this firmware")
    mv = memoryview(helper)
    return mv[:_HDR], mv[_HDR : _HDR + _RESP], mv[_HDR + _RESP :]


def _decode(response, body):
    # Majority of the 31 copies of each key bit, eight bits at a time: a bit-sliced 5-bit
    # counter (c4..c0) per byte column; count >= 16 of 31 is exactly c4. Same work whatever the
    # data (no branch on secret bits); small ints only, nothing allocated per step.
    for b in range(_KEY):
        c0 = c1 = c2 = c3 = c4 = 0
        for j in range(_R):
            x = response[j * _KEY + b] ^ body[j * _KEY + b]
            t = c0 & x
            c0 ^= x
            x = t
            t = c1 & x
            c1 ^= x
            x = t
            t = c2 & x
            c2 ^= x
            x = t
            t = c3 & x
            c3 ^= x
            c4 ^= t  # cannot carry out: at most 31 rows
        _key[b] = c4


def reproduce(response, helper):
    # -> the 32-byte secret of enrolment, or ReconstructionError.
    hdr, body, tag = _parse(helper)
    if len(response) < _RESP:
        raise ValueError("response must be at least %d bytes" % _RESP)
    _decode(response, body)
    for j in range(_R):
        o = j * _KEY
        for b in range(_KEY):
            _work[o + b] = body[o + b] ^ _key[b]
    for b in range(_KEY):
        _key[b] = 0
    secret, want = _finish(body, hdr)
    if not compare_digest(want, tag):
        raise ReconstructionError(
            "SRAM response does not match this device's helper data (too noisy, helper altered, "
            "or another chip); power-cycle and retry, re-enrol if it persists"
        )
    return secret
