# The polar fuzzy extractor (firmware/qdid/polar.py, profile 4) over the unix silicon model.
# heapsize: 64k
# timeout: 180
import os
import gc
import array
import hashlib
import silicon
from qdid import polar, offset
from qdid.hmac import hmac_sha256
from fwtest import raises_msg as _raises
from polarref import rate0_table, sc_decode

SEED_A = "00112233445566778899aabbccddeeff"
SEED_B = "ffeeddccbbaa99887766554433221100"
KEY = bytes(range(0x30, 0x41))  # 17 bytes
HDR = b"\x04\x0b\x1f\x83"  # profile 4, log2 N = 11, clip 31, 131 key bits


def _response(seed=0x5A):
    out = bytearray()
    h = bytes([seed])
    while len(out) < polar.RESPONSE_LEN:
        h = hashlib.sha256(h).digest()
        out += h
    return bytes(out[: polar.RESPONSE_LEN])


def _as_int(buf):
    return int.from_bytes(bytes(buf[:224]), "big") >> 7


def _noisy(resp, ber_q16, seed):
    # i.i.d. flips at rate ber_q16 / 65536 from a fixed SHA-256 stream (repeatable).
    out = bytearray(resp)
    stream = bytearray(3584)  # 2 bytes per bit, filled in place (no growing copies)
    h = bytes([seed])
    for o in range(0, 3584, 32):
        h = hashlib.sha256(h).digest()
        stream[o : o + 32] = h
    n = 0
    for b in range(1785):
        if (stream[2 * b] << 8 | stream[2 * b + 1]) < ber_q16:
            q = b + 7
            out[223 - (q >> 3)] ^= 1 << (q & 7)
            n += 1
    return bytes(out), n


def _transform(u):
    # x = u F^(x)11 on integers (bit j = position j), written again here so the test does not
    # trust the module: stage s XORs position j + 2^s into j for every j with bit s clear.
    x = u
    for s in range(11):
        d = 1 << s
        mask = 0
        for j in range(2048):
            if not j & d:
                mask |= 1 << j
        x ^= (x >> d) & mask
    return x


def test_helper_layout_and_codeword_structure():
    resp = _response()
    helper, secret = polar.enrol(resp, KEY)
    assert len(helper) == polar.HELPER_LEN == 244
    assert helper[:4] == HDR
    body = helper[4:228]
    assert body[-1] & 0x7F == 0
    # The offset XOR the response is the codeword x = u F^(x)11 on the read positions 263..2047
    # (response bit b = position 263 + b), u = the key bits, lowest first, at the information
    # positions and zeros elsewhere.
    m = int.from_bytes(KEY, "big") & ((1 << 131) - 1)
    u = 0
    k = 0
    for i in range(2048):
        if (polar.INFO >> i) & 1:
            u |= ((m >> k) & 1) << i
            k += 1
    assert k == 131
    assert polar.INFO & ((1 << 263) - 1) == 0  # u_i, i < 263, reach punctured positions only
    assert _as_int(body) ^ _as_int(resp) == _transform(u) >> 263
    masked = bytearray(resp)
    masked[223] &= 0x80
    assert secret == hashlib.sha256(b"qlink/fe/secret\x00" + HDR + bytes(masked)).digest()
    assert helper[228:] == hmac_sha256(secret, b"qlink/fe/tag\x00" + helper[:228])[:16]


def test_same_response_reproduces_with_a_saturated_margin():
    resp = _response()
    helper, secret = polar.enrol(resp, KEY)
    assert polar.reproduce(resp, helper) == secret
    assert polar.stats == {"corrected_bits": 0, "code_errors": 0, "margin": 31}
    assert polar.reproduce(resp + b"\xff" * 10, helper) == secret


def test_corrects_15_and_20_percent_iid_errors():
    resp = _response()
    helper, secret = polar.enrol(resp, KEY)
    for seed, q16 in ((1, 9830), (2, 9830), (3, 13107), (4, 13107)):  # 15 %, 20 %
        noisy, n = _noisy(resp, q16, seed)
        assert polar.reproduce(noisy, helper) == secret
        assert polar.stats["corrected_bits"] == n
        assert 0 <= polar.stats["margin"] <= 31


def test_half_the_bits_wrong_is_detected():
    resp = _response()
    helper, _ = polar.enrol(resp, KEY)
    noisy, _ = _noisy(resp, 32768, 9)
    msg = _raises(polar.ReconstructionError, polar.reproduce, noisy, helper)
    assert "power-cycle" in msg
    assert polar.stats["margin"] == -1


def test_buffers_hold_no_secret_after_use():
    # The corrected response, the decoder's LLRs and bits (the noisy response and the codeword)
    # and the word buffer are zeroed when enrol() and reproduce() return.
    resp = _response()
    helper, _ = polar.enrol(resp, KEY)
    bufs = (offset._work, polar._B)
    for buf in bufs:
        assert buf == bytearray(len(buf))
    noisy, _ = _noisy(resp, 9830, 5)
    polar.reproduce(noisy, helper)
    for buf in bufs:
        assert buf == bytearray(len(buf))


def test_reconstructs_a_default_die_and_rejects_a_clone():
    die = silicon.Die({"seed": SEED_A})
    helper, secret = polar.enrol(die.power_up(224), os.urandom(17))
    for _ in range(20):
        assert polar.reproduce(die.power_up(224), helper) == secret
    hot = silicon.Die({"seed": SEED_A, "temperature_c": 85, "age_years": 10})
    for _ in range(5):
        assert polar.reproduce(hot.power_up(224), helper) == secret
    clone = silicon.Die({"seed": SEED_B})
    for _ in range(3):
        _raises(polar.ReconstructionError, polar.reproduce, clone.power_up(224), helper)


def test_any_tampered_helper_byte_is_detected():
    resp = _response()
    helper, secret = polar.enrol(resp, KEY)
    for pos in (4, 100, 227, 228, 243):
        bad = bytearray(helper)
        bad[pos] ^= 0x80
        _raises(polar.ReconstructionError, polar.reproduce, resp, bytes(bad))
    for pos in range(4):
        bad = bytearray(helper)
        bad[pos] ^= 0x01
        assert "re-enrol" in _raises(polar.HelperError, polar.reproduce, resp, bytes(bad))


def test_other_profiles_and_lengths_are_refused():
    helper, _ = polar.enrol(_response(), KEY)
    profile2 = b"\x02\x07\x12\x83" + helper[4:]
    assert "re-enrol" in _raises(polar.HelperError, polar.reproduce, _response(), profile2)
    # Profile 3 (the same code shortened instead of punctured) is no longer read.
    profile3 = b"\x03\x0b\x1f\x83" + helper[4:]
    msg = _raises(polar.HelperError, polar.reproduce, _response(), profile3)
    assert "profile 3" in msg and "re-enrol" in msg
    _raises(polar.HelperError, polar.reproduce, _response(), helper[:-1])
    _raises(polar.HelperError, polar.reproduce, _response(), helper + b"\x00")
    _raises(polar.HelperError, polar.reproduce, _response(), b"")


def test_bad_inputs_are_rejected():
    _raises(ValueError, polar.enrol, _response(), KEY[:16])
    _raises(ValueError, polar.enrol, _response()[:223], KEY)
    helper, _ = polar.enrol(_response(), KEY)
    _raises(ValueError, polar.reproduce, _response()[:223], helper)


def test_secret_is_the_hash_of_the_response_whatever_the_key():
    resp = _response()
    h1, s1 = polar.enrol(resp, KEY)
    h2, s2 = polar.enrol(resp, bytes(17))
    assert s1 == s2 and h1[4:228] != h2[4:228]
    assert polar.reproduce(resp, h2) == s1


def test_rate_0_table_is_derived_from_the_information_set():
    assert rate0_table(polar.INFO, 2048) == polar._R0


def test_native_decoder_is_successive_cancellation_exactly():
    # The viper tree walk (rate-0 nodes skipped) gives the codeword and margin of a plain
    # recursive SC decoder on noisy words: right decodes at 25-30 % BER (margins 24, 10, 1),
    # wrong ones with ties (margin 0) at 32 %.
    resp = _response()
    helper, _ = polar.enrol(resp, KEY)
    w = _as_int(helper[4:228])
    for seed, q16 in ((21, 16384), (22, 18000), (23, 19661), (24, 20972)):
        gc.collect()
        noisy, _ = _noisy(resp, q16, seed)
        y = _as_int(noisy) ^ w
        c, errs, margin = polar._decode(y)
        assert errs is None
        llr = array.array("b", bytes(2048))
        for b in range(1785):
            llr[263 + b] = 1 - 2 * ((y >> b) & 1)
        bits, want_margin = sc_decode(llr, polar.INFO)
        want = 0
        for b in range(1785):
            want |= bits[263 + b] << b
        assert c == want and margin == want_margin
        bits = llr = None
