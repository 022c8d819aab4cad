# Code-offset framing shared by the fuzzy-extractor profiles (qdid.fuzzy: 2, qdid.polar: 4; the
# labels, errors and statistics also serve qdid.debias, profile 5, which has its own layout):
# Dodis, Reyzin, Smith, "Fuzzy Extractors", EUROCRYPT 2004, section 5.
#
# Helper (244 bytes): a 4-byte header (profile ID first), the 224-byte offset w = x XOR c, a
# 16-byte tag. x is the response: X = the big-endian integer of the 224 bytes read >> 7 (1785
# bits; the last byte's 7 low bits are unused and published as 0); c is a codeword of the
# profile's code in the same layout. The secret is SHA-256("qlink/fe/secret\0" || header ||
# corrected response), the tag HMAC-SHA256(secret, "qlink/fe/tag\0" || header || offset)
# truncated to 128 bits (NIST SP 800-107 section 5.3.4): too much noise, a tampered helper or
# another die is an error, never another key.
#
# A profile module gives its header and two functions on 1785-bit integers:
#   encode(m) -> c   (m: the 131 key bits)
#   decode(y) -> (c, code_errors, margin)   (y = x' XOR w; c < 0: no codeword found;
#                                            code_errors None: one per corrected response bit)
from micropython import const
import hashlib
from qdid import QdidError
from qdid.hmac import hmac_sha256, compare_digest

_PAD = const(7)  # unused low bits of the last response byte
_RESP = const(224)  # response bytes = ceil(1785 / 8)
_HDR = const(4)  # profile ID + 3 profile parameters
_TAG = const(16)  # truncated HMAC-SHA256 tag (128 bits)
_KEY_BITS = const(131)  # code dimension of every profile: key bits drawn at enrolment
HELPER_LEN = const(244)  # _HDR + _RESP + _TAG
RESPONSE_LEN = const(224)  # SRAM bytes a profile consumes
KEY_LEN = const(17)  # bytes of random input to enrol(): the low 131 bits are the key
RAW_BITS = const(1785)  # SRAM bits a profile consumes

SECRET_LABEL = b"qlink/fe/secret\x00"  # every profile's secret and tag labels (qdid.debias too)
TAG_LABEL = b"qlink/fe/tag\x00"

# The corrected response (secret material): filled, hashed and zeroed inside one call.
_work = bytearray(_RESP)

# Statistics of the last reproduce(), for the identity's health report (no secret in them: the
# number of corrected bits is a function of the noise, not of the key).
stats = {"corrected_bits": 0, "code_errors": 0, "margin": 0}


class ReconstructionError(QdidError):
    # The response does not reproduce the enrolled secret: the tag over the helper does not match.
    pass


class HelperError(QdidError):
    # The helper data is not a profile this firmware knows, or has the wrong length.
    pass


def hamming_weight(buf):
    # By nibble table (popcount of 0..15): the same work for every byte value.
    nib = b"\x00\x01\x01\x02\x01\x02\x02\x03\x01\x02\x02\x03\x02\x03\x03\x04"
    n = 0
    for b in buf:
        n += nib[b & 15] + nib[b >> 4]
    return n


def failed():
    # The error of a reconstruction that did not reproduce the enrolled secret; the statistics
    # say so (margin -1) and carry nothing of the failed decode.
    stats["corrected_bits"] = 0
    stats["code_errors"] = 0
    stats["margin"] = -1
    return ReconstructionError(
        "SRAM response does not match this device's helper data (too noisy, helper altered, "
        "or another chip); power-cycle and retry, re-enrol if it persists"
    )


def _response_int(response):
    if len(response) < _RESP:
        raise ValueError("response must be at least %d bytes" % _RESP)
    return int.from_bytes(bytes(response[:_RESP]), "big") >> _PAD


def _finish(hdr, helper):
    # _work holds the corrected response: hash it, wipe it, tag the helper (header + offset).
    h = hashlib.sha256(SECRET_LABEL)
    h.update(hdr)
    h.update(_work)
    secret = h.digest()
    for i in range(_RESP):
        _work[i] = 0
    return secret, hmac_sha256(secret, TAG_LABEL + helper)[:_TAG]


def enrol(response, key, hdr, encode):
    # -> (helper bytes, 32-byte secret). key: 17 bytes from the DRBG (its low 131 bits are used),
    # response: >= 224 bytes of power-up SRAM.
    if len(key) != KEY_LEN:
        raise ValueError("key must be 17 bytes")
    x = _response_int(response)
    m = int.from_bytes(bytes(key), "big") & ((1 << _KEY_BITS) - 1)
    w = x ^ encode(m)
    m = 0
    helper = hdr + (w << _PAD).to_bytes(_RESP, "big")
    _work[:] = (x << _PAD).to_bytes(_RESP, "big")
    x = 0
    secret, tag = _finish(hdr, helper)
    return helper + tag, secret


def reproduce(response, helper, hdr, decode):
    # -> the 32-byte secret of enrolment, or ReconstructionError. Updates `stats`.
    if len(helper) != HELPER_LEN:
        raise HelperError(
            "helper data is %d bytes, this firmware reads %d; re-enrol the device"
            % (len(helper), HELPER_LEN)
        )
    if bytes(helper[:_HDR]) != hdr:
        raise HelperError(
            "helper data profile %d is unknown to this firmware; re-enrol the device" % helper[0]
        )
    mv = memoryview(helper)
    x = _response_int(response)
    w = int.from_bytes(bytes(mv[_HDR : _HDR + _RESP]), "big") >> _PAD
    y = x ^ w
    x = 0
    c, errs, margin = decode(y)
    ok = c >= 0
    if ok:
        _work[:] = ((w ^ c) << _PAD).to_bytes(_RESP, "big")
        secret, want = _finish(hdr, mv[: _HDR + _RESP])
        ok = compare_digest(want, mv[_HDR + _RESP :])
    if not ok:
        raise failed()
    n = hamming_weight(((y ^ c) << _PAD).to_bytes(_RESP, "big"))
    stats["corrected_bits"] = n
    stats["code_errors"] = n if errs is None else errs
    stats["margin"] = margin
    return secret
