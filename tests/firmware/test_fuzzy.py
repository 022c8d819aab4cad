# The code-offset fuzzy extractor (firmware/qdid/fuzzy.py) over the unix silicon model.
# heapsize: 64k
# timeout: 120
import os
import hashlib
import silicon
from qdid import fuzzy
from qdid.hmac import hmac_sha256
from fwtest import raises_msg as _raises

SEED_A = "00112233445566778899aabbccddeeff"
SEED_B = "ffeeddccbbaa99887766554433221100"
KEY = bytes(range(0x10, 0x20))
HDR = b"\x01\x1f\x00\x80"  # profile 1, R = 31, 128 key bits


def _response(seed=0x5A):
    # A fixed 496-byte response for byte-exact checks.
    return bytes((seed + 7 * i) & 0xFF for i in range(fuzzy.RESPONSE_LEN))


def test_helper_layout_is_header_offset_and_tag():
    resp = _response()
    helper, secret = fuzzy.enrol(resp, KEY)
    assert len(helper) == fuzzy.HELPER_LEN == 532
    assert helper[:4] == HDR
    body = helper[4:500]
    for j in range(31):
        for b in range(16):
            assert body[16 * j + b] == resp[16 * j + b] ^ KEY[b]
    want_secret = hashlib.sha256(b"qlink/fe/secret\x00" + HDR + resp).digest()
    assert secret == want_secret
    assert helper[500:] == hmac_sha256(secret, b"qlink/fe/tag\x00" + HDR + body)


def test_exact_response_reproduces_the_secret():
    resp = _response()
    helper, secret = fuzzy.enrol(resp, KEY)
    assert fuzzy.reproduce(resp, helper) == secret
    # Only the first 496 bytes count: a longer read gives the same secret.
    assert fuzzy.reproduce(resp + b"\xff" * 100, helper) == secret


def test_work_buffers_are_wiped_after_use():
    resp = _response()
    helper, _ = fuzzy.enrol(resp, KEY)
    assert fuzzy._work == bytearray(fuzzy.RESPONSE_LEN)
    fuzzy.reproduce(resp, helper)
    assert fuzzy._work == bytearray(fuzzy.RESPONSE_LEN)
    assert fuzzy._key == bytearray(16)


def _flip(resp, key_bit, copies):
    # Flip `copies` of the 31 repetitions of one key bit.
    out = bytearray(resp)
    byte, bit = key_bit // 8, key_bit % 8
    for j in range(copies):
        out[16 * j + byte] ^= 1 << bit
    return bytes(out)


def test_corrects_up_to_15_errors_per_key_bit():
    resp = _response()
    helper, secret = fuzzy.enrol(resp, KEY)
    noisy = resp
    for kb in range(128):
        noisy = _flip(noisy, kb, 15)  # 15 of 31 copies of every key bit: still a majority
    assert fuzzy.reproduce(noisy, helper) == secret


def test_sixteen_errors_on_one_key_bit_is_detected():
    resp = _response()
    helper, _ = fuzzy.enrol(resp, KEY)
    for kb in (0, 77, 127):
        _raises(fuzzy.ReconstructionError, fuzzy.reproduce, _flip(resp, kb, 16), helper)


def test_reconstructs_across_200_power_ups_of_a_default_die():
    die = silicon.Die({"seed": SEED_A})
    helper, secret = fuzzy.enrol(die.power_up(fuzzy.RESPONSE_LEN), os.urandom(16))
    failures = 0
    for _ in range(200):
        try:
            if fuzzy.reproduce(die.power_up(fuzzy.RESPONSE_LEN), helper) != secret:
                raise AssertionError("a reconstruction gave another secret")
        except fuzzy.ReconstructionError:
            failures += 1
    assert failures == 0


def test_reconstructs_at_85_c_after_enrolment_at_25_c():
    enrolled = silicon.Die({"seed": SEED_A})
    hot = silicon.Die({"seed": SEED_A, "temperature_c": 85})
    helper, secret = fuzzy.enrol(enrolled.power_up(fuzzy.RESPONSE_LEN), os.urandom(16))
    for _ in range(50):
        assert fuzzy.reproduce(hot.power_up(fuzzy.RESPONSE_LEN), helper) == secret


def test_clone_die_with_the_same_helper_is_rejected():
    helper, _ = fuzzy.enrol(silicon.Die({"seed": SEED_A}).power_up(496), os.urandom(16))
    clone = silicon.Die({"seed": SEED_B})
    for _ in range(5):
        _raises(fuzzy.ReconstructionError, fuzzy.reproduce, clone.power_up(496), helper)


def test_any_tampered_helper_byte_is_detected():
    die = silicon.Die({"seed": SEED_A})
    helper, secret = fuzzy.enrol(die.power_up(496), os.urandom(16))
    resp = die.power_up(496)
    assert fuzzy.reproduce(resp, helper) == secret
    for pos in (4, 5, 100, 257, 499, 500, 515, 531):  # offset body and tag
        bad = bytearray(helper)
        bad[pos] ^= 0x01
        _raises(fuzzy.ReconstructionError, fuzzy.reproduce, resp, bytes(bad))
    for pos in range(4):  # header: an unknown profile, not a wrong key
        bad = bytearray(helper)
        bad[pos] ^= 0x01
        _raises(fuzzy.HelperError, fuzzy.reproduce, resp, bytes(bad))


def test_helper_of_the_wrong_length_is_rejected():
    helper, _ = fuzzy.enrol(_response(), KEY)
    _raises(fuzzy.HelperError, fuzzy.reproduce, _response(), helper[:-1])
    _raises(fuzzy.HelperError, fuzzy.reproduce, _response(), helper + b"\x00")
    _raises(fuzzy.HelperError, fuzzy.reproduce, _response(), b"")


def test_bad_inputs_are_rejected():
    _raises(ValueError, fuzzy.enrol, _response(), KEY[:15])
    _raises(ValueError, fuzzy.enrol, _response(), KEY + b"\x00")
    _raises(ValueError, fuzzy.enrol, _response()[:495], KEY)
    helper, _ = fuzzy.enrol(_response(), KEY)
    _raises(ValueError, fuzzy.reproduce, _response()[:495], helper)


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
    h2, s2 = fuzzy.enrol(resp, bytes(16))
    assert s1 == s2
    assert h1[4:500] != h2[4:500]
    assert fuzzy.reproduce(resp, h2) == s1


def test_hamming_weight():
    assert fuzzy.hamming_weight(b"") == 0
    assert fuzzy.hamming_weight(b"\x00\xff\x01\x80") == 10
