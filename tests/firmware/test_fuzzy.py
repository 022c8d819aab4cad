# The code-offset fuzzy extractor (firmware/qdid/fuzzy.py, profile 2: repetition 7 + BCH(255,
# 131, 18)) over the unix silicon model.
# heapsize: 64k
# timeout: 180
import os
import hashlib
import silicon
from qdid import fuzzy
from qdid.hmac import hmac_sha256
from fwtest import raises_msg as _raises

SEED_A = "00112233445566778899aabbccddeeff"
SEED_B = "ffeeddccbbaa99887766554433221100"
KEY = bytes(range(0x10, 0x21))  # 17 bytes
HDR = b"\x02\x07\x12\x83"  # profile 2, R = 7, t = 18, 131 key bits

# GF(2^8), x^8 + x^4 + x^3 + x^2 + 1, written again here so the test does not trust the module.
_EXP = []
_v = 1
for _i in range(255):
    _EXP.append(_v)
    _v <<= 1
    if _v & 0x100:
        _v ^= 0x11D


def _eval(word, j):
    # word(alpha^j) for a binary polynomial held as an integer.
    s = 0
    for i in range(255):
        if (word >> i) & 1:
            s ^= _EXP[(i * j) % 255]
    return s


def _response(seed=0x5A):
    # A fixed 224-byte response for byte-exact checks (no repeated blocks, weight near half).
    out = bytearray()
    h = bytes([seed])
    while len(out) < fuzzy.RESPONSE_LEN:
        h = hashlib.sha256(h).digest()
        out += h
    return bytes(out[: fuzzy.RESPONSE_LEN])


def _as_int(buf):
    return int.from_bytes(bytes(buf[:224]), "big") >> 7


def _flip(resp, block, copies):
    # Flip `copies` of the 7 copies of code bit `block` (bit 255 * j + block of the response).
    out = bytearray(resp)
    for j in range(copies):
        b = 255 * j + block + 7
        out[223 - (b >> 3)] ^= 1 << (b & 7)
    return bytes(out)


def test_generator_has_the_36_roots_of_bch_255_131_18():
    g = fuzzy.GENERATOR
    assert g >> 124 == 1  # degree 124 = 255 - 131
    for j in range(1, 37):
        assert _eval(g, j) == 0
    assert _eval(g, 37) != 0


def test_helper_layout_is_header_offset_tag():
    resp = _response()
    helper, secret = fuzzy.enrol(resp, KEY)
    assert len(helper) == fuzzy.HELPER_LEN == 244 <= 256
    assert helper[:4] == HDR
    body = helper[4:228]
    assert body[-1] & 0x7F == 0  # the 7 unused response bits are not published
    # The offset XOR the response is one codeword of the BCH code, repeated 7 times.
    cw = _as_int(body) ^ _as_int(resp)
    rows = [(cw >> (255 * j)) & ((1 << 255) - 1) for j in range(7)]
    assert rows == [rows[0]] * 7
    assert rows[0] != 0
    for j in (1, 2, 17, 35, 36):
        assert _eval(rows[0], j) == 0
    # The codeword is m(x) g(x) with m the low 131 bits of the key.
    m = int.from_bytes(KEY, "big") & ((1 << 131) - 1)
    c = 0
    for i in range(131):
        if (m >> i) & 1:
            c ^= fuzzy.GENERATOR << i
    assert rows[0] == c
    masked = bytearray(resp)
    masked[223] &= 0x80
    want = hashlib.sha256(b"qlink/fe/secret\x00" + HDR + bytes(masked)).digest()
    assert secret == want
    assert helper[228:] == hmac_sha256(secret, b"qlink/fe/tag\x00" + helper[:228])[:16]
    assert fuzzy.RAW_BITS == 1785


def test_same_response_reproduces_and_longer_reads_are_ignored():
    resp = _response()
    helper, secret = fuzzy.enrol(resp, KEY)
    assert fuzzy.reproduce(resp, helper) == secret
    assert fuzzy.stats["margin"] == 18 and fuzzy.stats["corrected_bits"] == 0
    assert fuzzy.reproduce(resp + b"\xff" * 100, helper) == secret


def test_buffers_hold_no_secret_after_use():
    resp = _response()
    helper, _ = fuzzy.enrol(resp, KEY)
    assert fuzzy._work == bytearray(fuzzy.RESPONSE_LEN)
    fuzzy.reproduce(resp, helper)
    assert fuzzy._work == bytearray(fuzzy.RESPONSE_LEN)


def test_corrects_18_wrong_code_bits_under_3_flips_everywhere_else():
    resp = _response()
    helper, secret = fuzzy.enrol(resp, KEY)
    noisy = resp
    for blk in range(255):
        noisy = _flip(noisy, blk, 5 if blk % 14 == 0 and blk < 252 else 3)
    # 18 blocks with 5 of 7 copies flipped (wrong, strong), 237 with 3 (right, weak): 1.0 s
    assert fuzzy.reproduce(noisy, helper) == secret
    assert fuzzy.stats["code_errors"] == 18
    assert fuzzy.stats["margin"] == 0
    assert fuzzy.stats["corrected_bits"] == 18 * 5 + 237 * 3


def test_19_strong_errors_are_detected():
    resp = _response()
    helper, _ = fuzzy.enrol(resp, KEY)
    noisy = resp
    for blk in range(0, 19 * 13, 13):
        noisy = _flip(noisy, blk, 5)
    msg = _raises(fuzzy.ReconstructionError, fuzzy.reproduce, noisy, helper)
    assert "power-cycle" in msg
    assert fuzzy.stats["margin"] == -1


def test_19_weak_errors_are_detected_too():
    # 19 wrong code bits that are each only a 4-3 vote: beyond the radius, whatever the margin.
    resp = _response()
    helper, _ = fuzzy.enrol(resp, KEY)
    noisy = resp
    for blk in range(0, 19 * 8, 8):
        noisy = _flip(noisy, blk, 4)
    _raises(fuzzy.ReconstructionError, fuzzy.reproduce, noisy, helper)


def test_reconstructs_across_100_power_ups_of_a_default_die():
    die = silicon.Die({"seed": SEED_A})
    helper, secret = fuzzy.enrol(die.power_up(fuzzy.RESPONSE_LEN), os.urandom(17))
    failures = 0
    for _ in range(100):
        try:
            if fuzzy.reproduce(die.power_up(fuzzy.RESPONSE_LEN), helper) != secret:
                raise AssertionError("a reconstruction gave another secret")
        except fuzzy.ReconstructionError:
            failures += 1
    assert failures == 0


def test_reconstructs_under_heat_low_supply_and_ageing():
    enrolled = silicon.Die({"seed": SEED_A})
    helper, secret = fuzzy.enrol(enrolled.power_up(fuzzy.RESPONSE_LEN), os.urandom(17))
    for params in (
        {"temperature_c": 85},
        {"temperature_c": -40},
        {"supply_v": 2.7},
        {"age_years": 10},
    ):
        p = {"seed": SEED_A}
        p.update(params)
        stressed = silicon.Die(p)
        for _ in range(10):
            assert fuzzy.reproduce(stressed.power_up(fuzzy.RESPONSE_LEN), helper) == secret


def test_clone_die_with_the_same_helper_is_rejected():
    helper, _ = fuzzy.enrol(silicon.Die({"seed": SEED_A}).power_up(224), os.urandom(17))
    clone = silicon.Die({"seed": SEED_B})
    for _ in range(3):
        _raises(fuzzy.ReconstructionError, fuzzy.reproduce, clone.power_up(224), helper)


def test_any_tampered_helper_byte_is_detected():
    die = silicon.Die({"seed": SEED_A})
    helper, secret = fuzzy.enrol(die.power_up(224), os.urandom(17))
    resp = die.power_up(224)
    assert fuzzy.reproduce(resp, helper) == secret
    for pos in (228, 235, 243):  # tag
        bad = bytearray(helper)
        bad[pos] ^= 0x01
        _raises(fuzzy.ReconstructionError, fuzzy.reproduce, resp, bytes(bad))
    for pos in (4, 100, 227):  # offset: the tag covers it even where the decoder corrects it
        bad = bytearray(helper)
        bad[pos] ^= 0x80
        _raises(fuzzy.ReconstructionError, fuzzy.reproduce, resp, bytes(bad))
    for pos in range(4):  # header: an unknown profile, not a wrong key
        bad = bytearray(helper)
        bad[pos] ^= 0x01
        _raises(fuzzy.HelperError, fuzzy.reproduce, resp, bytes(bad))


def test_profile_1_helper_is_refused_with_re_enrol():
    old = b"\x01\x1f\x00\x80" + bytes(528)
    msg = _raises(fuzzy.HelperError, fuzzy.reproduce, _response(), old)
    assert "re-enrol" in msg


def test_helper_of_the_wrong_length_is_rejected():
    helper, _ = fuzzy.enrol(_response(), KEY)
    _raises(fuzzy.HelperError, fuzzy.reproduce, _response(), helper[:-1])
    _raises(fuzzy.HelperError, fuzzy.reproduce, _response(), helper + b"\x00")
    _raises(fuzzy.HelperError, fuzzy.reproduce, _response(), b"")


def test_bad_inputs_are_rejected():
    _raises(ValueError, fuzzy.enrol, _response(), KEY[:16])
    _raises(ValueError, fuzzy.enrol, _response(), KEY + b"\x00")
    _raises(ValueError, fuzzy.enrol, _response()[:223], KEY)
    helper, _ = fuzzy.enrol(_response(), KEY)
    _raises(ValueError, fuzzy.reproduce, _response()[:223], helper)


def test_error_messages_hold_nothing_secret():
    resp = _response()
    helper, secret = fuzzy.enrol(resp, KEY)
    msg = _raises(fuzzy.ReconstructionError, fuzzy.reproduce, _response(0x11), helper)
    for secret_hex in ("".join("%02x" % b for b in secret), "".join("%02x" % b for b in KEY)):
        assert secret_hex not in msg
    assert "power-cycle" in msg


def test_secret_is_the_hash_of_the_response_whatever_the_key():
    # The key only masks the response in the helper; the secret is the corrected response's hash.
    resp = _response()
    h1, s1 = fuzzy.enrol(resp, KEY)
    h2, s2 = fuzzy.enrol(resp, bytes(17))
    assert s1 == s2
    assert h1[4:228] != h2[4:228]
    assert fuzzy.reproduce(resp, h2) == s1


def test_hamming_weight():
    assert fuzzy.hamming_weight(b"") == 0
    assert fuzzy.hamming_weight(b"\x00\xff\x01\x80") == 10
