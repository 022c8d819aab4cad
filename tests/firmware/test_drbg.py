# HMAC_DRBG (SP 800-90A Rev.1 10.1.2, SHA-256) inside MicroPython. cryptography_vectors ships
# no DRBG vectors; the known answer below is NIST CAVP HMAC_DRBG.rsp ([SHA-256], no prediction
# resistance, 256-bit entropy, 128-bit nonce, no personalization or additional input, COUNT 0:
# two generate calls, the second returned). Reseed, personalization and additional input are
# cross-checked against an independent CPython implementation in
# tests/host/test_drbg_crosscheck.py.
from binascii import unhexlify
from qdid import QdidError
from qdid.drbg import HmacDrbg, DrbgError, ReseedRequired

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
    _raises(DrbgError, d.generate, 4097)
    _raises(DrbgError, d.generate, -1)
