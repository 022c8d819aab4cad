# Entropy: SP 800-90B health tests on the raw noise, conditioning, DRBG (firmware/qdid/entropy.py).
# heapsize: 64k
import os
from qdid import entropy
from fwtest import raises_msg as _raises


class FakeBoard:
    # A noise source that plays back a pattern (bytes, repeated) or urandom when none is given.
    def __init__(self, pattern=None):
        self.pattern = pattern
        self.pos = 0
        self.short = False

    def noise(self, n):
        if self.short:
            return bytes(n - 1)
        if self.pattern is None:
            return os.urandom(n)
        p = self.pattern
        out = bytearray(n)
        for i in range(n):
            out[i] = p[(self.pos + i) % len(p)]
        self.pos += n
        return bytes(out)

    def unique_id(self):
        return b"\x01\x02\x03\x04\x05\x06\x07\x08"


def _distinct(n):
    # n samples with no value repeated next to itself and none dominating.
    return bytes(i % 251 for i in range(n))


def test_repetition_count_cutoff_is_21_for_one_bit_per_sample():
    # SP 800-90B 4.4.1: C = 1 + ceil(20 / H) = 21 for H = 1.
    t = entropy.HealthTests()
    t.feed(_distinct(10) + b"\x07" * 20 + _distinct(10))  # a run of 20 passes
    t = entropy.HealthTests()
    _raises(entropy.EntropyError, t.feed, _distinct(10) + b"\x07" * 21)


def test_repetition_count_spans_calls():
    t = entropy.HealthTests()
    t.feed(_distinct(10) + b"\x07" * 11)
    _raises(entropy.EntropyError, t.feed, b"\x07" * 10)


def test_adaptive_proportion_cutoff_is_311_of_512():
    # SP 800-90B 4.4.2, W = 512, H = 1: C = 311. Window: the first sample and 511 more.
    def window(hits):
        # `hits` copies of 0xAA, the first sample included, in runs of 20 (below the RCT cutoff).
        out = bytearray(512)
        k = 0
        for i in range(512):
            if k < hits and i % 21 != 20:
                out[i] = 0xAA
                k += 1
            else:
                out[i] = 1 + i % 100
        return bytes(out), k

    ok, n_ok = window(310)
    bad, n_bad = window(311)
    assert (n_ok, n_bad) == (310, 311)
    t = entropy.HealthTests()
    t.feed(ok)
    t = entropy.HealthTests()
    _raises(entropy.EntropyError, t.feed, bad)


def test_stuck_source_fails_closed():
    msg = _raises(entropy.EntropyError, entropy.init, FakeBoard(b"\x42"))
    assert "health test" in msg
    assert not entropy.ready()
    _raises(entropy.EntropyError, entropy.random_bytes, 16)


def test_biased_source_fails_the_proportion_test():
    # 0x55 three times out of four: never 21 in a row, but 384 of every 512 samples.
    biased = FakeBoard(b"\x55\x55\x55\x01\x55\x55\x55\x02\x55\x55\x55\x03")
    _raises(entropy.EntropyError, entropy.init, biased)
    assert not entropy.ready()


def test_short_noise_read_is_an_error():
    b = FakeBoard()
    entropy.init(b)
    b.short = True
    entropy._requests = 1 << 30  # force the next request to reseed
    _raises(entropy.EntropyError, entropy.random_bytes, 16)


def test_good_source_gives_random_bytes():
    entropy.init(FakeBoard())
    assert entropy.ready()
    a = entropy.random_bytes(32)
    b = entropy.random_bytes(32)
    assert len(a) == 32 and a != b
    assert len(entropy.random_bytes(0)) == 0
    assert len(entropy.random_bytes(100)) == 100
    _raises(ValueError, entropy.random_bytes, -1)
    _raises(ValueError, entropy.random_bytes, 65537)


def test_unix_board_noise_passes_the_health_tests():
    # The modelled ADC (6 bits of min-entropy per sample) against the 1-bit claim.
    import board

    class Noise:
        noise = board.Board.noise

        def unique_id(self):
            return b"unix"

    entropy.init(Noise())
    assert len(entropy.random_bytes(64)) == 64


def test_source_that_goes_bad_after_start_fails_closed_at_reseed():
    b = FakeBoard()
    entropy.init(b)
    entropy.random_bytes(16)
    b.pattern = b"\x00"  # stuck from now on
    entropy._requests = 1 << 30
    _raises(entropy.EntropyError, entropy.random_bytes, 16)
    # Still refused: a failed source stays failed until the board is reset.
    b.pattern = None
    _raises(entropy.EntropyError, entropy.random_bytes, 16)


def test_random_bytes_before_init_is_an_error():
    entropy._drbg = None
    msg = _raises(entropy.EntropyError, entropy.random_bytes, 16)
    assert "init" in msg


def test_conditioned_block_is_sha256_of_label_and_samples():
    import hashlib

    b = FakeBoard(_distinct(251))
    src = entropy._Source(b)  # start-up test consumes 1024 samples
    raw = bytes((1024 + i) % 251 for i in range(512))
    assert src.block() == hashlib.sha256(b"qlink/entropy/v1\x00" + raw).digest()
