# Profile 5 (firmware/qdid/debias.py): von Neumann pair selection + polar code, over the unix
# silicon model and over scripted responses.
# heapsize: 64k
# timeout: 240
import os
import gc
import array
import hashlib
import silicon
from qdid import debias, polarsc
from qdid.hmac import hmac_sha256
from fwtest import raises_msg as _raises
from polarref import rate0_table, sc_decode

SEED_A = "00112233445566778899aabbccddeeff"
SEED_B = "ffeeddccbbaa99887766554433221100"
KEY = bytes(range(0x30, 0x41))  # 17 bytes
HDR = b"\x05\x0a\x1f\x83"  # profile 5, log2 N = 10, clip 31, 131 key bits
_POP = bytes(bin(i).count("1") for i in range(256))


def _response(seed=0x5A, n=640):
    out = bytearray()
    h = bytes([seed])
    while len(out) < n:
        h = hashlib.sha256(h).digest()
        out += h
    return bytes(out[:n])


def _kept(resp):
    # The first 1024 pairs (bit 7 - k of bytes 2t, 2t + 1 is pair 8t + k) whose cells differ,
    # written again here so the test does not trust the module: pair numbers 8t + k.
    out = array.array("H", bytes(2048))
    n = 0
    for t in range(320):
        d = resp[2 * t] ^ resp[2 * t + 1]
        for k in range(8):
            if n < 1024 and (d >> (7 - k)) & 1:
                out[n] = 8 * t + k
                n += 1
    assert n == 1024
    return out


def _bit(buf, j):
    return (buf[j >> 3] >> (7 - (j & 7))) & 1


def _transform(u):
    # x = u F^(x)10 on integers (bit j = position j).
    x = u
    for s in range(10):
        d = 1 << s
        mask = 0
        for j in range(1024):
            if not j & d:
                mask |= 1 << j
        x ^= (x >> d) & mask
    return x


def _noisy(resp, ber_q16, seed):
    # i.i.d. flips of all 5120 cells at rate ber_q16 / 65536 from a fixed SHA-256 stream.
    out = bytearray(resp)
    h = bytes([seed])
    n = 0
    for o in range(0, 5120, 16):
        h = hashlib.sha256(h).digest()
        for i in range(16):
            if (h[2 * i] << 8 | h[2 * i + 1]) < ber_q16:
                b = o + i
                out[b >> 3] ^= 1 << (7 - (b & 7))
                n += 1
    return bytes(out), n


def test_helper_layout_selection_offset_and_tag():
    resp = _response()
    helper, secret = debias.enrol(resp, KEY)
    assert len(helper) == debias.HELPER_LEN == 468
    assert helper[:4] == HDR
    kept = _kept(resp)
    sel = helper[4:324]
    want = bytearray(320)
    for i in kept:
        want[i >> 3] |= 0x80 >> (i & 7)
    assert sel == want  # exactly the first 1024 unequal pairs, nothing after them
    # Retained bits u (first cells), the codeword x = v F^(x)10 with the key bits, lowest
    # first, at the information positions; offset w = u XOR x.
    m = int.from_bytes(KEY, "big") & ((1 << 131) - 1)
    v = 0
    k = 0
    for i in range(1024):
        if (debias.INFO >> i) & 1:
            v |= ((m >> k) & 1) << i
            k += 1
    assert k == 131
    x = _transform(v)
    u = bytearray(128)
    for j, i in enumerate(kept):
        if (resp[2 * (i >> 3)] >> (7 - (i & 7))) & 1:
            u[j >> 3] |= 0x80 >> (j & 7)
    w = helper[324:452]
    for j in range(1024):
        assert _bit(w, j) == _bit(u, j) ^ ((x >> j) & 1)
    assert secret == hashlib.sha256(b"qlink/fe/secret\x00" + HDR + bytes(u)).digest()
    assert helper[452:] == hmac_sha256(secret, b"qlink/fe/tag\x00" + helper[:452])[:16]


def test_same_response_reproduces_with_a_saturated_margin():
    resp = _response()
    helper, secret = debias.enrol(resp, KEY)
    assert debias.reproduce(resp, helper) == secret
    assert debias.stats == {"corrected_bits": 0, "code_errors": 0, "margin": 31}
    assert debias.reproduce(resp + b"\xff" * 10, helper) == secret
    # Cells outside the kept pairs are never read.
    other = bytearray(resp)
    last_t = _kept(resp)[-1] >> 3
    for i in range(2 * last_t + 2, 640):
        other[i] ^= 0xFF
    assert debias.reproduce(bytes(other), helper) == secret


def test_corrects_15_and_20_percent_iid_errors():
    resp = _response()
    helper, secret = debias.enrol(resp, KEY)
    for seed, q16 in ((1, 9830), (2, 9830), (3, 13107), (4, 13107)):  # 15 %, 20 %
        noisy, n = _noisy(resp, q16, seed)
        assert debias.reproduce(noisy, helper) == secret
        st = debias.stats
        # About 40 % of the flips land on the 2048 cells of kept pairs.
        assert 0.25 * n < st["corrected_bits"] < 0.55 * n
        assert st["corrected_bits"] // 2 <= st["code_errors"] <= st["corrected_bits"]
        assert 0 <= st["margin"] <= 31


def test_corrected_counts_by_hand():
    resp = _response()
    helper, secret = debias.enrol(resp, KEY)
    kept = _kept(resp)
    bad = bytearray(resp)
    for j in (0, 1, 500):  # both cells of pair 0, the first cell of 1, the second of 500
        t, k = kept[j] >> 3, kept[j] & 7
        if j != 500:
            bad[2 * t] ^= 0x80 >> k
        if j != 1:
            bad[2 * t + 1] ^= 0x80 >> k
    assert debias.reproduce(bytes(bad), helper) == secret
    assert debias.stats["corrected_bits"] == 4 and debias.stats["code_errors"] == 3


def test_half_the_bits_wrong_is_detected():
    resp = _response()
    helper, _ = debias.enrol(resp, KEY)
    noisy, _ = _noisy(resp, 32768, 9)
    msg = _raises(debias.ReconstructionError, debias.reproduce, noisy, helper)
    assert "power-cycle" in msg
    assert debias.stats["margin"] == -1


def test_buffers_hold_no_secret_after_use():
    resp = _response()
    helper, _ = debias.enrol(resp, KEY)
    for buf in (debias._B, debias._u):
        assert buf == bytearray(len(buf))
    noisy, _ = _noisy(resp, 9830, 5)
    debias.reproduce(noisy, helper)
    for buf in (debias._B, debias._u):
        assert buf == bytearray(len(buf))
    _raises(debias.ReconstructionError, debias.reproduce, _response(7), helper)
    for buf in (debias._B, debias._u):
        assert buf == bytearray(len(buf))


def test_dies_across_the_bias_range_reconstruct_and_a_clone_does_not():
    for bias in (0.42, 0.5, 0.58):
        die = silicon.Die({"seed": SEED_A, "bias": bias})
        helper, secret = debias.enrol(die.power_up(640), os.urandom(17))
        for _ in range(6):
            assert debias.reproduce(die.power_up(640), helper) == secret
        gc.collect()
    die = silicon.Die({"seed": SEED_A, "bias": 0.42})
    helper, secret = debias.enrol(die.power_up(640), os.urandom(17))
    hot = silicon.Die({"seed": SEED_A, "bias": 0.42, "temperature_c": 85, "age_years": 10})
    for _ in range(4):
        assert debias.reproduce(hot.power_up(640), helper) == secret
    clone = silicon.Die({"seed": SEED_B, "bias": 0.42})
    for _ in range(3):
        _raises(debias.ReconstructionError, debias.reproduce, clone.power_up(640), helper)


def test_kept_bits_of_a_biased_die_are_unbiased():
    # A die of population bias 0.42 reads about 43 % ones; the first cells of its unequal
    # pairs are 1 half the time (1024 bits: sigma 0.016).
    die = silicon.Die({"seed": SEED_B, "bias": 0.42})
    resp = die.power_up(640)
    ones = 0
    for b in resp:
        ones += _POP[b]
    assert ones * 100 < 45 * 5120
    kept = _kept(resp)
    first = 0
    for i in kept:
        first += (resp[2 * (i >> 3)] >> (7 - (i & 7))) & 1
    assert 0.44 * 1024 < first < 0.56 * 1024


def test_a_biased_die_is_refused_with_a_sentence():
    n = 0
    for bias, head in ((0.34, "3"), (0.64, "6")):
        resp = silicon.Die({"seed": SEED_A, "bias": bias}).power_up(640)
        msg = _raises(debias.DieBiasError, debias.enrol, resp, KEY)
        assert msg.startswith("SRAM power-up share of ones is " + head)
        assert "outside the 38-62% this identity supports" in msg and "another board" in msg
        n += 1
    assert n == 2
    # Balanced but with equal cells in most pairs (a written pattern, say): too few pairs.
    resp = bytearray(_response())
    for t in range(300):
        resp[2 * t + 1] = resp[2 * t]
    msg = _raises(debias.DieBiasError, debias.enrol, bytes(resp), KEY)
    assert "fewer than 1024 of the SRAM's 2560 cell pairs" in msg
    assert debias._u == bytearray(128)


def test_the_window_edges():
    # 1946 ones of 5120 (38.01 %) enrol, 1945 (37.99 %) do not; 3174 (61.99 %) enrol, 3175 not.
    def weighted(w):
        out = bytearray(640)
        for i in range(w):
            p = (i * 1031) % 5120
            out[p >> 3] |= 1 << (p & 7)
        return bytes(out)

    for w in (1946, 3174):
        debias.enrol(weighted(w), KEY)
    for w in (1945, 3175):
        _raises(debias.DieBiasError, debias.enrol, weighted(w), KEY)


def test_any_tampered_helper_byte_is_detected():
    resp = _response()
    helper, secret = debias.enrol(resp, KEY)
    kept = _kept(resp)
    for pos in (4, 200, 323, 324, 400, 451, 452, 467):
        bad = bytearray(helper)
        bad[pos] ^= 0x80
        _raises(debias.ReconstructionError, debias.reproduce, resp, bytes(bad))
    # A kept pair swapped for an unkept one: the same count, another selection.
    bad = bytearray(helper)
    bad[4 + (kept[3] >> 3)] ^= 0x80 >> (kept[3] & 7)
    for lane in range(8):
        if not bad[4 + 319] & (0x80 >> lane):
            bad[4 + 319] |= 0x80 >> lane
            break
    _raises(debias.ReconstructionError, debias.reproduce, resp, bytes(bad))
    for pos in range(4):
        bad = bytearray(helper)
        bad[pos] ^= 0x01
        assert "re-enrol" in _raises(debias.HelperError, debias.reproduce, resp, bytes(bad))
    assert debias.reproduce(resp, helper) == secret


def test_other_profiles_lengths_and_inputs_are_refused():
    helper, _ = debias.enrol(_response(), KEY)
    for hdr in (b"\x04\x0b\x1f\x83", b"\x02\x07\x12\x83"):
        msg = _raises(debias.HelperError, debias.reproduce, _response(), hdr + helper[4:])
        assert "re-enrol" in msg
    for bad in (helper[:-1], helper + b"\x00", b""):
        _raises(debias.HelperError, debias.reproduce, _response(), bad)
    _raises(ValueError, debias.enrol, _response(), KEY[:16])
    _raises(ValueError, debias.enrol, _response()[:639], KEY)
    _raises(ValueError, debias.reproduce, _response()[:639], helper)


def test_secret_is_the_hash_of_the_kept_bits_whatever_the_key():
    resp = _response()
    h1, s1 = debias.enrol(resp, KEY)
    h2, s2 = debias.enrol(resp, bytes(17))
    assert s1 == s2 and h1[4:324] == h2[4:324] and h1[324:452] != h2[324:452]
    assert debias.reproduce(resp, h2) == s1


def test_rate_0_table_is_derived_from_the_information_set():
    assert rate0_table(debias.INFO, 1024) == debias._R0


def test_native_decoder_is_successive_cancellation_exactly_with_erasures():
    # LLRs +1 / 0 / -1 as kept pairs give them, from a SHA-256 stream: at low noise, at the
    # design point and far beyond it (wrong decodes, ties).
    for seed, erase, wrong in ((1, 40, 4), (2, 85, 11), (3, 110, 30), (4, 120, 45)):
        gc.collect()
        llr = array.array("b", bytes(1024))
        h = bytes([seed])
        for o in range(0, 1024, 32):
            h = hashlib.sha256(h).digest()
            for i in range(32):
                r = h[i]
                llr[o + i] = -1 if r < wrong else (0 if r < wrong + erase else 1)
        buf = debias._B
        for j in range(1024):
            buf[j] = llr[j] & 0xFF
        margin = polarsc.decode(buf, debias._R0, 1024)
        got = bytes(buf[:1024])
        polarsc.zero(buf, 2048)
        bits, want_margin = sc_decode(llr, debias.INFO)
        assert got == bytes(bits) and margin == want_margin
        bits = llr = None
