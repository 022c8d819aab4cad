# Entropy: SP 800-90B health tests on the raw noise, conditioning, DRBG (firmware/qdid/entropy.py).
# heapsize: 64k
import os
from qdid import entropy
from qdid.drbg import RequestTooLarge, DrbgError
from fwtest import raises_msg as _raises


class FakeBoard:
    # A noise source that plays back a pattern (bytes, repeated) or urandom when none is given;
    # counts the samples it gave.
    def __init__(self, pattern=None):
        self.pattern = pattern
        self.pos = 0
        self.short = False
        self.given = 0

    def noise(self, n):
        self.given += n
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
    msg = _raises(entropy.EntropyError, entropy.random_bytes, 16)
    assert "wrong number of samples" in msg


def test_good_source_gives_random_bytes():
    entropy.init(FakeBoard())
    assert entropy.ready()
    a = entropy.random_bytes(32)
    b = entropy.random_bytes(32)
    assert len(a) == 32 and a != b
    assert len(entropy.random_bytes(0)) == 0
    assert len(entropy.random_bytes(100)) == 100
    assert (
        _raises(ValueError, entropy.random_bytes, -1) == "random_bytes: n must be 0 or more, got -1"
    )


def test_request_above_the_drbg_cap_says_the_limit_and_what_to_do():
    # The DRBG gives at most 4096 bytes per generate (qdid.drbg.MAX_REQUEST); the entropy
    # module's own limit is the same, and the refusal is a sentence, not a bare DrbgError().
    entropy.init(FakeBoard())
    assert len(entropy.random_bytes(4096)) == 4096
    for n in (4097, 65536, 65537):
        msg = _raises(RequestTooLarge, entropy.random_bytes, n)
        assert msg == (
            "random_bytes: at most 4096 bytes per call, asked for %d; split the request into "
            "calls of 4096 bytes or fewer" % n
        )
    assert issubclass(RequestTooLarge, DrbgError)
    assert len(entropy.random_bytes(32)) == 32  # nothing broken by the refusal


def test_unix_board_noise_passes_the_health_tests():
    # The modelled ADC (6 bits of min-entropy per sample) against the 1-bit claim.
    import board

    class Noise:
        noise = board.Board.noise

        def unique_id(self):
            return b"unix"

    entropy.init(Noise())
    assert len(entropy.random_bytes(64)) == 64


def test_every_request_reads_fresh_samples_through_the_tests():
    # SP 800-90B 4.4: the continuous tests run while the source is used, not only at start-up
    # and reseed. 1024 start-up samples + two 512-sample blocks at init, then 32 per request.
    b = FakeBoard()
    entropy.init(b)
    assert b.given == 1024 + 2 * 512
    entropy.random_bytes(16)
    entropy.random_bytes(0)
    assert b.given == 2048 + 2 * 32
    entropy.check()
    assert b.given == 2048 + 3 * 32


def test_unix_board_noise_fault_stops_entropy_after_start():
    # The rig's fault on the emulated board (boards/unix/board.py, QLINK_NOISE_FAULT): while the
    # file exists the modelled ADC reads one code; the next request finds it.
    import board
    from fwtest import tmpdir

    class Noise:
        noise = board.Board.noise

        def unique_id(self):
            return b"unix"

    path = tmpdir() + "/noise-fault"
    saved = board._NOISE_FAULT
    board._NOISE_FAULT = path
    try:
        entropy.init(Noise())
        assert len(entropy.random_bytes(16)) == 16
        open(path, "w").close()
        assert Noise().noise(3) == b"\x80\x80\x80"
        _raises(entropy.EntropyError, entropy.random_bytes, 16)
        os.remove(path)
        assert len(set(Noise().noise(64))) > 8  # the input works again; entropy stays failed
        _raises(entropy.EntropyError, entropy.random_bytes, 16)
    finally:
        board._NOISE_FAULT = saved


def test_source_stuck_after_start_fails_the_next_request():
    b = FakeBoard()
    entropy.init(b)
    entropy.random_bytes(16)
    b.pattern = b"\x00"  # stuck from now on: no reseed is due for another 4095 requests
    msg = _raises(entropy.EntropyError, entropy.random_bytes, 16)
    assert "health test" in msg
    # Still refused, with no output: a failed source stays failed until the board is reset.
    b.pattern = None
    msg = _raises(entropy.EntropyError, entropy.random_bytes, 16)
    assert msg == "noise source failed a health test earlier; reset the board"
    _raises(entropy.EntropyError, entropy.check)


def test_source_stuck_after_start_fails_check_between_requests():
    b = FakeBoard()
    entropy.init(b)
    entropy.check()
    b.pattern = b"\x99"
    _raises(entropy.EntropyError, entropy.check)
    _raises(entropy.EntropyError, entropy.random_bytes, 1)


def test_source_biased_after_start_fails_within_two_windows_of_requests():
    # 0x55 three times out of four never repeats 21 times in a row, but fills 384 of every 512
    # samples: the adaptive proportion test stops it within 2 x 512 / 32 = 32 requests.
    b = FakeBoard()
    entropy.init(b)
    b.pattern = b"\x55\x55\x55\x01\x55\x55\x55\x02\x55\x55\x55\x03"
    served = 0
    try:
        while served < 64:
            entropy.random_bytes(8)
            served += 1
    except entropy.EntropyError:
        pass
    assert served < 32, served


def test_source_failing_at_reseed_fails_closed():
    b = FakeBoard()
    entropy.init(b)
    entropy.random_bytes(16)
    entropy._requests = 1 << 30  # the next request reseeds
    b.pattern = _distinct(251)[:32] + b"\x07" * 600  # the per-request read passes, the block not
    _raises(entropy.EntropyError, entropy.random_bytes, 16)


def test_check_before_init_is_an_error():
    entropy._source = None
    entropy._drbg = None
    assert "init" in _raises(entropy.EntropyError, entropy.check)


def test_random_bytes_before_init_is_an_error():
    entropy._drbg = None
    entropy._source = None
    msg = _raises(entropy.EntropyError, entropy.random_bytes, 16)
    assert "init" in msg


def test_conditioned_block_is_sha256_of_label_and_samples():
    import hashlib

    b = FakeBoard(_distinct(251))
    src = entropy._Source(b)  # start-up test consumes 1024 samples
    raw = bytes((1024 + i) % 251 for i in range(512))
    assert src.block() == hashlib.sha256(b"qlink/entropy/v1\x00" + raw).digest()
