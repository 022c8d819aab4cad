# Entropy for the firmware: raw noise from the board, SP 800-90B health tests, SHA-256
# conditioning, and the HMAC-DRBG of qdid.drbg (SP 800-90A) that every random byte comes from.
#
#   init(board)       start-up tests on 1024 samples (SP 800-90B 4.3), then seed the DRBG
#   random_bytes(n)   DRBG output, at most qdid.drbg.MAX_REQUEST bytes a call; every call first
#                     reads _PER_REQUEST fresh samples through the continuous tests, and reseeds
#                     from the noise source every _RESEED_EVERY calls
#   check()           the same read and tests without output, for a device that runs for hours
#                     between requests (agent.main calls it every telemetry interval)
#
# Continuous tests (SP 800-90B 4.4) run on every sample the source gives, carried across reads:
# the repetition count test catches a stuck source within one read (_PER_REQUEST > _RCT_CUTOFF),
# the adaptive proportion test a biased one within two 512-sample windows. A failure is final
# until a reset (no output after a failure, SP 800-90B 4.3): every later call raises
# EntropyError, and the agent stops in safe mode with the reason in its log.
# Cost: the tests are one pass of native (viper) code over the read. Measured with callgrind on
# the Unix port, a read of 32 samples from the unix board's model is ~104,000 instructions and
# the tests add ~5,200 (5 %; the same loop in bytecode added ~38,000, 36 %).
#
# Claimed min-entropy: _H_CLAIM = 1 bit per 8-bit raw sample. Every board must meet it (the unix
# board's model gives 6 bits; a real board's figure comes from an SP 800-90B assessment of its
# raw samples, e.g. NIST's ea_non_iid, before the claim may be raised).
#
# Conditioning (SP 800-90B 3.1.5.1.1, SHA-256 is a vetted conditioning function): one APT window
# of 512 samples (h_in = 512 bits claimed) -> 32 bytes. h_in >= n_out + 64 = 320, so the output
# counts as full entropy (3.1.5.1.2). The per-request samples serve the tests only: the DRBG's
# entropy input is the conditioned blocks at instantiate and reseed.
#
# RAM: the test state (20 bytes), the DRBG (two 32-byte values), one read's samples while tested.
from micropython import const
import micropython
import hashlib
from qdid import QdidError
from qdid.drbg import HmacDrbg, MAX_REQUEST, RequestTooLarge

_TYPE_CHECKING = const(0)  # true for mypy only (mypy-firmware.ini); compiles to nothing here
if _TYPE_CHECKING:
    from hal import Board
    from micropython import ptr8, ptr32  # builtins inside @micropython.viper functions

_H_CLAIM = const(1)  # claimed min-entropy, bits per raw sample
_RCT_CUTOFF = const(21)  # 1 + ceil(20 / H), alpha = 2^-20 (SP 800-90B 4.4.1)
_APT_WINDOW = const(512)  # non-binary samples (SP 800-90B 4.4.2)
_APT_CUTOFF = const(311)  # 1 + CRITBINOM(512, 2^-1, 1 - 2^-20) (SP 800-90B 4.4.2, table 2)
_STARTUP = const(1024)  # samples tested and discarded at start-up (SP 800-90B 4.3 item 4)
_PER_REQUEST = const(32)  # samples tested on every request; > _RCT_CUTOFF (see above)
_RESEED_EVERY = const(4096)  # generate requests between reseeds (below qdid.drbg's interval)
_STATE = const(20)  # bytes of test state: five 32-bit words, see _scan
_LABEL = b"qlink/entropy/v1\x00"


class EntropyError(QdidError):
    # The noise source failed a health test, or entropy was asked for before init(): no output.
    pass


@micropython.viper
def _scan(samples, state) -> int:
    # Repetition count (4.4.1) and adaptive proportion (4.4.2) over `samples`, continuing from
    # `state`: [last sample, its run length, APT reference sample, its count, window position].
    # A run length of 0 means no sample yet; window position 0 starts a window at the next
    # sample. Returns 1 when either test reached its cutoff.
    S = ptr8(samples)
    T = ptr32(state)
    n = int(len(samples))
    last = T[0]
    run = T[1]
    ref = T[2]
    count = T[3]
    seen = T[4]
    fail = 0
    i = 0
    while i < n:
        s = int(S[i])
        if run != 0 and s == last:
            run += 1
            if run >= _RCT_CUTOFF:
                fail = 1
        else:
            last = s
            run = 1
        if seen == 0:
            ref = s
            count = 1
        elif s == ref:
            count += 1
            if count >= _APT_CUTOFF:
                fail = 1
        seen += 1
        if seen == _APT_WINDOW:
            seen = 0
        i += 1
    T[0] = last
    T[1] = run
    T[2] = ref
    T[3] = count
    T[4] = seen
    return fail


class HealthTests:
    # Continuous repetition-count and adaptive-proportion tests over every sample drawn
    # (SP 800-90B 4.4.1 and 4.4.2), state carried across calls. Once failed, stays failed.
    def __init__(self):
        self.failed = False
        self._state = bytearray(_STATE)

    def feed(self, samples):
        if self.failed:
            raise EntropyError("noise source failed a health test earlier; reset the board")
        if _scan(samples, self._state):
            self.failed = True
            raise EntropyError(
                "noise source failed its health test (stuck or biased); check the board's noise "
                "input, then reset"
            )


class _Source:
    # Health-tested noise: tested reads, and conditioned full-entropy 32-byte blocks.
    def __init__(self, board: Board) -> None:
        self._board = board
        self.tests = HealthTests()
        self.tests.feed(self._read(_STARTUP))  # start-up test; these samples are discarded

    def _read(self, n: int) -> bytes:
        raw = self._board.noise(n)
        if len(raw) != n:
            raise EntropyError("board noise() returned the wrong number of samples")
        return raw

    def check(self) -> None:
        self.tests.feed(self._read(_PER_REQUEST))

    def block(self) -> bytes:
        raw = self._read(_APT_WINDOW)
        self.tests.feed(raw)
        h = hashlib.sha256(_LABEL)
        h.update(raw)
        return h.digest()


_source: _Source | None = None
_drbg: HmacDrbg | None = None
_requests = 0
_NOT_READY = "entropy is not initialised: call qdid.entropy.init(board) at boot"


def init(board: Board) -> None:
    # Start-up tests, then instantiate the DRBG: 32 bytes of full entropy, a 16-byte nonce from
    # the next block (SP 800-90A 8.6.7), the board's unique ID as personalisation string.
    global _source, _drbg, _requests
    _source = None
    _drbg = None
    src = _Source(board)
    _drbg = HmacDrbg(src.block(), src.block()[:16], b"qlink/drbg\x00" + board.unique_id())
    _source = src
    _requests = 0


def ready() -> bool:
    return _drbg is not None


def check() -> None:
    # One read of fresh samples through the continuous tests; raises EntropyError when the
    # source has failed (now or before).
    if _source is None:
        raise EntropyError(_NOT_READY)
    _source.check()


def random_bytes(n: int) -> bytes:
    global _requests
    src = _source
    drbg = _drbg
    if src is None or drbg is None:
        raise EntropyError(_NOT_READY)
    if n < 0:
        raise ValueError("random_bytes: n must be 0 or more, got %d" % n)
    if n > MAX_REQUEST:
        raise RequestTooLarge(
            "random_bytes: at most %d bytes per call, asked for %d; split the request into "
            "calls of %d bytes or fewer" % (MAX_REQUEST, n, MAX_REQUEST)
        )
    src.check()
    if _requests >= _RESEED_EVERY:
        drbg.reseed(src.block())
        _requests = 0
    _requests += 1
    return drbg.generate(n)
