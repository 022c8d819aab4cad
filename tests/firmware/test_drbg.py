# HMAC_DRBG (SP 800-90A Rev.1 10.1.2, SHA-256) inside MicroPython, against every SHA-256 case of
# NIST's CAVP HMAC_DRBG vectors (CAVS 14.3): no reseed, prediction resistance false with a reseed,
# prediction resistance true; personalization and additional input 0 or 256 bits; 180 cases.
# scripts/fetch-drbg-vectors fetches them at set-up (make setup) into the virtualenv; the
# single known answer below (COUNT 0 of the first no-reseed section) needs no fetch. Random
# scripts against an independent CPython implementation: tests/host/test_drbg_crosscheck.py.
# timeout: 120
import os
from binascii import unhexlify
from qdid import QdidError
from qdid.drbg import HmacDrbg, DrbgError, ReseedRequired, RequestTooLarge, MAX_REQUEST
import drbgcavp
from fwtest import raises_msg

_ENTROPY = unhexlify("ca851911349384bffe89de1cbdc46e6831e44d34a4fb935ee285dd14b71a7488")
_NONCE = unhexlify("659ba96c601dc69fc902940805ec0ca8")
_RETURNED = unhexlify(
    "e528e9abf2dece54d47c7e75e5fe302149f817ea9fb4bee6f4199697d04d5b89"
    "d54fbb978a15b5c443c9ec21036d2460b6f73ebad0dc2aba6e624abf07745bc1"
    "07694bb7547bb0995f70de25d6b29e2d3011bb19d27676c07162c8b5ccde0668"
    "961df86803482cb37ed6d5c0bb8d50cf1f50d476aa0458bdaba806f48be9dcb8"
)


def _raises(cls, fn, *args):
    try:
        fn(*args)
    except cls:
        return
    raise AssertionError("no " + cls.__name__)


def test_cavp_known_answer():
    d = HmacDrbg(_ENTROPY, _NONCE)
    d.generate(128)
    assert d.generate(128) == _RETURNED


def test_same_seed_same_stream_and_lengths():
    a = HmacDrbg(b"\x11" * 32, b"n")
    b = HmacDrbg(b"\x11" * 32, b"n")
    assert a.generate(1) == b.generate(1)
    assert a.generate(33) == b.generate(33)
    assert len(a.generate(0)) == 0
    assert len(a.generate(4096)) == 4096


def test_every_input_changes_the_output():
    base = HmacDrbg(b"\x11" * 32, b"n", b"p").generate(32)
    assert HmacDrbg(b"\x12" + b"\x11" * 31, b"n", b"p").generate(32) != base
    assert HmacDrbg(b"\x11" * 32, b"m", b"p").generate(32) != base
    assert HmacDrbg(b"\x11" * 32, b"n", b"q").generate(32) != base
    assert HmacDrbg(b"\x11" * 32, b"n", b"p").generate(32, b"a") != base
    d = HmacDrbg(b"\x11" * 32, b"n", b"p")
    d.reseed(b"\x22" * 32)
    assert d.generate(32) != base


def test_reseed_required_after_the_interval():
    d = HmacDrbg(b"\x11" * 32, reseed_interval=3)
    for _ in range(3):
        d.generate(16)
    _raises(ReseedRequired, d.generate, 16)
    assert issubclass(ReseedRequired, QdidError)
    d.reseed(b"\x33" * 32, b"more")
    assert len(d.generate(16)) == 16


def test_rejects_short_entropy_and_oversized_requests():
    _raises(DrbgError, HmacDrbg, b"\x11" * 31)
    _raises(DrbgError, HmacDrbg, b"\x11" * 32, b"", b"", 0)
    d = HmacDrbg(b"\x11" * 32)
    _raises(DrbgError, d.reseed, b"\x11" * 31)
    _raises(DrbgError, d.generate, -1)


def test_request_above_the_cap_names_the_limit_and_the_size():
    # SP 800-90A 9.3.1 step 2: max_number_of_bits_per_request; the largest request still works.
    d = HmacDrbg(b"\x11" * 32)
    assert MAX_REQUEST == 4096
    assert len(d.generate(MAX_REQUEST)) == MAX_REQUEST
    msg = raises_msg(RequestTooLarge, d.generate, MAX_REQUEST + 1)
    assert msg == "HMAC_DRBG: at most 4096 bytes per request, asked for 4097; split the request"
    assert issubclass(RequestTooLarge, DrbgError)
    assert len(d.generate(16)) == 16  # a refused request leaves the DRBG usable


def _vectors():
    folder = os.getenv("QLINK_DRBG_VECTORS") or (
        (os.getenv("QLINK_REPO") or ".") + "/.venv/share/qlink-vectors/hmac_drbg"
    )
    try:
        os.stat(drbgcavp.path(folder, "pr_true"))
    except OSError:
        raise AssertionError(
            "NIST CAVP HMAC_DRBG vectors missing in %s: run scripts/fetch-drbg-vectors "
            "(make setup does)" % folder
        )
    return folder


def _run(c):
    # The CAVP call sequence of each mode (DRBGVS 2013, section 6): instantiate, then
    #   no_reseed: generate(add1), generate(add2)
    #   pr_false:  reseed(EntropyInputReseed, AdditionalInputReseed), generate(add1), generate(add2)
    #   pr_true:   reseed(EntropyInputPR, add) before each generate, which then has no
    #              additional input of its own (SP 800-90A 9.3.1 step 7.1-7.4)
    # and the second generate's output is ReturnedBits.
    n = len(c.returned)
    d = HmacDrbg(c.entropy, c.nonce, c.pers)
    if c.mode == "pr_true":
        d.reseed(c.reseeds[0], c.adds[0])
        d.generate(n)
        d.reseed(c.reseeds[1], c.adds[1])
        return d.generate(n)
    adds = c.adds
    if c.mode == "pr_false":
        d.reseed(c.reseeds[0], adds[0])
        adds = adds[1:]
    d.generate(n, adds[0])
    return d.generate(n, adds[1])


def _all_cases_of(mode):
    folder = _vectors()
    per_section = {}
    lengths = set()
    bad = []
    first = None
    for c in drbgcavp.cases(folder, mode):
        if first is None:
            first = c
        sect = c.section()
        per_section[sect] = per_section.get(sect, 0) + 1
        lengths.add((len(c.pers), len(c.adds[-1])))
        assert len(c.returned) == 128, c.name  # [ReturnedBitsLen = 1024]
        if _run(c) != c.returned:
            bad.append(c.name)
    assert not bad, "%d cases differ: %s" % (len(bad), ", ".join(bad[:5]))
    # The whole SHA-256 part: four sections of 15, personalization and additional input each
    # absent or 256 bits.
    assert sorted(per_section.values()) == [15, 15, 15, 15], per_section
    assert sorted(lengths) == [(0, 0), (0, 32), (32, 0), (32, 32)], lengths
    # The comparison can fail: one flipped bit of entropy input gives other bits.
    e = bytearray(first.entropy)
    e[0] ^= 1
    first.entropy = bytes(e)
    assert _run(first) != first.returned


def test_cavp_no_reseed_all_sha256_cases():
    _all_cases_of("no_reseed")


def test_cavp_prediction_resistance_false_with_reseed_all_sha256_cases():
    _all_cases_of("pr_false")


def test_cavp_prediction_resistance_true_all_sha256_cases():
    _all_cases_of("pr_true")
