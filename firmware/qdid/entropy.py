# Entropy for the firmware: raw noise from the board, SP 800-90B health tests, SHA-256
# conditioning, and the HMAC-DRBG of qdid.drbg (SP 800-90A) that every random byte comes from.
#
#   init(board)       start-up tests on 1024 samples (SP 800-90B 4.3), then seed the DRBG
#   random_bytes(n)   DRBG output; reseeds from the noise source every _RESEED_EVERY requests
#
# Claimed min-entropy: _H_CLAIM = 1 bit per 8-bit raw sample. Every board must meet it (the unix
# board's model gives 6 bits; a real board's figure comes from an SP 800-90B assessment of its
# raw samples, e.g. NIST's ea_non_iid, before the claim may be raised).
#
# Conditioning (SP 800-90B 3.1.5.1.1, SHA-256 is a vetted conditioning function): one APT window
# of 512 samples (h_in = 512 bits claimed) -> 32 bytes. h_in >= n_out + 64 = 320, so the output
# counts as full entropy (3.1.5.1.2).
from micropython import const
import hashlib
from qdid import QdidError

_TYPE_CHECKING = const(0)  # true for mypy only (mypy-firmware.ini); compiles to nothing here
if _TYPE_CHECKING:
    from hal import Board
    from qdid.drbg import HmacDrbg

_H_CLAIM = const(1)  # claimed min-entropy, bits per raw sample
_RCT_CUTOFF = const(21)  # 1 + ceil(20 / H), alpha = 2^-20 (SP 800-90B 4.4.1)
_APT_WINDOW = const(512)  # non-binary samples (SP 800-90B 4.4.2)
_APT_CUTOFF = const(311)  # 1 + CRITBINOM(512, 2^-1, 1 - 2^-20) (SP 800-90B 4.4.2, table 2)
_STARTUP = const(1024)  # samples tested and discarded at start-up (SP 800-90B 4.3 item 4)
_RESEED_EVERY = const(4096)  # generate requests between reseeds (below qdid.drbg's interval)
_MAX_REQUEST = const(65536)  # bytes per generate request (SP 800-90A table 2: 2^19 bits)
_LABEL = b"qlink/entropy/v1\x00"


class EntropyError(QdidError):
    # The noise source failed a health test, or entropy was asked for before init(): no output.
    pass


class HealthTests:
    # Continuous repetition-count and adaptive-proportion tests over every sample drawn
    # (SP 800-90B 4.4.1 and 4.4.2), state carried across calls. Once failed, stays failed.
    def __init__(self):
        self.failed = False
        self._last = -1
        self._run = 0
        self._apt_ref = -1
        self._apt_count = 0
        self._apt_seen = 0

    def feed(self, samples):
        if self.failed:
            raise EntropyError("noise source failed a health test earlier; reset the board")
        last = self._last
        run = self._run
        ref = self._apt_ref
        count = self._apt_count
        seen = self._apt_seen
        for s in samples:
            if s == last:
                run += 1
                if run >= _RCT_CUTOFF:
                    self.failed = True
            else:
                last = s
                run = 1
            if seen == 0:
                ref = s
                count = 1
            elif s == ref:
                count += 1
                if count >= _APT_CUTOFF:
                    self.failed = True
            seen += 1
            if seen == _APT_WINDOW:
                seen = 0
        self._last = last
        self._run = run
        self._apt_ref = ref
        self._apt_count = count
        self._apt_seen = seen
        if self.failed:
            raise EntropyError(
                "noise source failed its health test (stuck or biased); check the board's noise "
                "input, then reset"
            )


class _Source:
    # Health-tested, conditioned noise: full-entropy 32-byte blocks.
    def __init__(self, board: Board) -> None:
        self._board = board
        self.tests = HealthTests()
        self.tests.feed(board.noise(_STARTUP))  # start-up test; these samples are discarded

    def block(self) -> bytes:
        raw = self._board.noise(_APT_WINDOW)
        if len(raw) != _APT_WINDOW:
            raise EntropyError("board noise() returned the wrong number of samples")
        self.tests.feed(raw)
        h = hashlib.sha256(_LABEL)
        h.update(raw)
        return h.digest()


_source: _Source | None = None
_drbg: HmacDrbg | None = None
_requests = 0


def init(board: Board) -> None:
    # Start-up tests, then instantiate the DRBG: 32 bytes of full entropy, a 16-byte nonce from
    # the next block (SP 800-90A 8.6.7), the board's unique ID as personalisation string.
    global _source, _drbg, _requests
    _source = None
    _drbg = None
    src = _Source(board)
    from qdid.drbg import HmacDrbg

    _drbg = HmacDrbg(src.block(), src.block()[:16], b"qlink/drbg\x00" + board.unique_id())
    _source = src
    _requests = 0


def ready() -> bool:
    return _drbg is not None


def random_bytes(n: int) -> bytes:
    global _requests
    if _drbg is None:
        raise EntropyError("entropy is not initialised: call qdid.entropy.init(board) at boot")
    if n < 0 or n > _MAX_REQUEST:
        raise ValueError("request 0..65536 bytes")
    if _requests >= _RESEED_EVERY:
        if _TYPE_CHECKING:
            assert _source is not None  # init() sets it with _drbg
        _drbg.reseed(_source.block())
        _requests = 0
    _requests += 1
    return _drbg.generate(n)
