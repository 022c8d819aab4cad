# The device identity: SRAM power-up state -> fuzzy extractor secret -> 8 seeds -> P-256 key.
#
#   boot(board, data_dir="data") -> Identity
#     first boot (no data/helper.bin): enrol, write the public helper data atomically;
#     later boots: reconstruct the same secret from a fresh power-up read.
#   Fuzzy extractor by helper profile (first byte): 5 = qdid.debias (von Neumann debiasing +
#   polar code, new enrolments), 4 = qdid.polar and 2 = qdid.fuzzy (still reconstructed); loaded
#   for the boot only, with what it imports (qdid.offset, qdid.polarsc).
#
# Seeds (docs/protocol.md "Identity"): PRK = HKDF-Extract(salt = SHA-256(helper.bin), secret)
# (RFC 5869 2.2); seed i = HKDF-Expand(PRK, b"qlink/seed/" + ASCII decimal i, 16), i = 0..7
# (RFC 5869 2.3). Each seed is a separate PRF output under its own label, so no seed follows from
# another seed plus public data. Seed 0 is the enrolment key: d = p256.scalar_from_seed(seed 0).
#
# Owner epochs (docs/identity.md "5. Seeds"; the state on flash is qdid.owner's): the device's key
# is d_E = p256.scalar_from_seed(seed E) for its owner epoch E (0..7, data/owner.json; absent = 0,
# so a device that never moved keeps the key it was enrolled with). A transfer moves it to E + 1
# (Identity.public_key_of, then use_epoch once the server has the new key). A re-enrolment
# recorded as pending runs at a cold boot: the boot reconstructs the current secret from
# helper.bin and, from the same power-up read, the next set's (enrolled now, helper.new written
# before anything else happens; or reconstructed from helper.new when an earlier power-on wrote
# it), and returns both identities (Identity.successor, epoch 0 of the next set).
#
# PUF health (Identity.health, docs/identity.md): every failed check (not a power-up state,
# Hamming weight outside 35-65 %, an all-0/all-1 or repeated block, a reconstruction failure,
# too many corrected bits) fails closed with an error saying what to do, and increments a public
# counter in data/puf_health.bin that the next successful boot reports.
#
# Warm boots: enrolment is refused (the SRAM may hold what the last run wrote, not a power-up
# state, and enrolling that would bind the identity to firmware data). Reconstruction is allowed:
# if the region still holds the power-up state (warm resets keep SRAM) it works, and if it was
# overwritten the helper's tag detects it and the error says to power-cycle.
#
# Nothing derived here is written or printed: helper.bin is public (code offset + tag). The
# secret and seeds exist as immutable bytes only briefly; the PRK the object keeps is a
# bytearray zeroed by wipe(). The private scalar is an int (cannot be overwritten in place):
# wipe() drops the only reference.
from micropython import const
import hashlib
import binascii
import sys
import gc
from qdid import QdidError
from qdid import entropy
from qdid.hmac import hkdf_extract, hkdf_expand
from qdid import files

_TYPE_CHECKING = const(0)  # true for mypy only (mypy-firmware.ini); compiles to nothing here
if _TYPE_CHECKING:
    from hal import Board

SEEDS = const(8)  # seeds per device
_SEED_LEN = const(16)  # bytes per seed (128 bits)
_HW_MIN_PCT = const(35)  # power-up Hamming weight bounds, percent of the bits read
_HW_MAX_PCT = const(65)
_BLOCK = const(16)  # bytes per block of the repeated-block check
_MAX_RAW_BER_PCT = const(25)  # corrected response bits above this share of the read: fail closed
_RESPONSE_LEN = const(640)  # SRAM bytes read: profile 5's; profiles 2 and 4 use the first 224
_ENROL_PROFILE = const(5)  # helper profile of new enrolments (qdid.debias)
_HELPER = "helper.bin"
_HEALTH = "puf_health.bin"  # public counter of PUF health failures (4 bytes, big-endian)
_SEED_INFO = b"qlink/seed/"


class EnrolmentRefused(QdidError):
    # Enrolment needs a power-up SRAM state; this boot did not follow a power-on.
    pass


class SramHealthError(QdidError):
    # The SRAM read does not look like a power-up state (stuck, written, or heavily biased).
    pass


class IdentityWiped(QdidError):
    # The key was dropped with wipe(); boot again to use the identity.
    pass


def hamming_weight(buf: bytes | bytearray | memoryview) -> int:
    # By nibble table (popcount of 0..15): the same work for every byte value. qdid.offset has
    # the extractors' copy; importing that one would keep the extractor framing (its module,
    # buffers and names) resident after every boot, 3 KiB of the 64 KiB the onboarding path
    # needs for its P-256 and DER work.
    nib = b"\x00\x01\x01\x02\x01\x02\x02\x03\x01\x02\x02\x03\x02\x03\x03\x04"
    n = 0
    for b in buf:
        n += nib[b & 15] + nib[b >> 4]
    return n


def check_sram(resp: bytes | bytearray) -> None:
    # Reject reads that cannot be a power-up state before they reach the fuzzy extractor.
    n = len(resp) * 8
    if n == 0:
        raise SramHealthError("SRAM read is empty: the board's PUF region is wrong")
    w = hamming_weight(resp)
    if w == 0 or w == n:
        raise SramHealthError(
            "SRAM power-up region reads all %d: it was written before it was read, or the "
            "board's PUF address is wrong" % (1 if w else 0)
        )
    if w * 100 < _HW_MIN_PCT * n or w * 100 > _HW_MAX_PCT * n:
        raise SramHealthError(
            "SRAM power-up Hamming weight is %d%%, outside 35-65%%: the region was written before "
            "it was read, or the die is too biased to enrol" % (w * 100 // n)
        )
    # Power-up SRAM never repeats a 16-byte block (2^-128 per pair at full entropy) and has no
    # all-0 or all-1 block; memset/memcpy patterns and stack fills do.
    mv = memoryview(resp)
    nblk = len(resp) // _BLOCK
    for i in range(nblk):
        blk = mv[i * _BLOCK : (i + 1) * _BLOCK]
        bw = hamming_weight(blk)
        if bw == 0 or bw == _BLOCK * 8:
            raise SramHealthError(
                "SRAM power-up region has an all-%d block at byte %d: it was written before it "
                "was read; power-cycle the board" % (1 if bw else 0, i * _BLOCK)
            )
        if i and blk == mv[(i - 1) * _BLOCK : i * _BLOCK]:
            raise SramHealthError(
                "SRAM power-up region repeats a block at byte %d: it was written before it was "
                "read; power-cycle the board" % (i * _BLOCK)
            )


def _extractor(profile):
    # The fuzzy-extractor module of a helper profile (docs/identity.md): 5 = debiased polar
    # (enrolment default), 4 = polar and 2 = repetition + BCH (still reconstructed). Unknown
    # profiles (1, 3) go to the default, whose parser refuses them with a message that says to
    # re-enrol.
    if profile == 2:
        from qdid import fuzzy

        return fuzzy
    if profile == 4:
        from qdid import polar

        return polar
    from qdid import debias

    return debias


def health_failures(data_dir: str = "data") -> int:
    # PUF health failures recorded on this device so far (public; the agent reports it).
    raw = files.read(data_dir + "/" + _HEALTH)
    if raw is None or len(raw) != 4:
        return 0
    return int.from_bytes(raw, "big")


def _count_failure(data_dir: str) -> None:
    # Count a failed health check before failing closed, so the next boot that succeeds can
    # report it. Best effort: a filesystem error must not hide the health error itself.
    try:
        n = health_failures(data_dir) + 1
        files.write(data_dir + "/" + _HEALTH, n.to_bytes(4, "big"))
    except OSError:
        pass


class Identity:
    def __init__(self, prk: bytes, health: dict[str, int] | None = None, epoch: int = 0) -> None:
        # PUF health of this boot (public numbers, no secret): corrected_bits (raw SRAM bits the
        # decoder corrected), code_errors (BCH symbols corrected), margin (errors the decoder
        # could still have corrected: the "PUF health"), health_failures (counter over the
        # device's life).
        self.health = health or {}
        self._prk = bytearray(prk)
        self._live = True
        # Set by boot(): the successor step data/owner.json recorded (qdid.owner.TRANSFER or
        # REENROL), and for a re-enrolment the next set's identity, or why there is none this
        # boot (a warm boot, an enrolment the die refused).
        self.pending: str | None = None
        self.successor: Identity | None = None
        self.successor_error: str | None = None
        self._use(epoch)

    def _use(self, epoch: int) -> None:
        # The key of owner epoch `epoch`: seed `epoch` (docs/identity.md "5. Seeds").
        from qdid import p256

        self._d: int | None = p256.scalar_from_seed(self.seed(epoch))
        self.public_key: bytes = p256.public_key(self._d)
        self.device_id: str = binascii.hexlify(hashlib.sha256(self.public_key).digest()).decode()
        self.epoch = epoch

    def public_key_of(self, epoch: int) -> bytes:
        # Owner epoch `epoch`'s public key, for the successor request that names it; its scalar
        # lives only for this call.
        from qdid import p256

        return p256.public_key(p256.scalar_from_seed(self.seed(epoch)))

    def use_epoch(self, epoch: int) -> None:
        # After the server registered epoch `epoch`'s key: sign with it from now on.
        self._check()
        self._use(epoch)
        self.pending = None

    def adopt_successor(self) -> None:
        # After the server registered the re-enrolment's identity: this object becomes it (epoch
        # 0 of the next set) and the current PRK is zeroed.
        nxt = self.successor
        if nxt is None:
            raise ValueError("no successor identity this boot")
        nxt._check()
        self._check()
        for i in range(len(self._prk)):
            self._prk[i] = 0
        self._prk, self._d = nxt._prk, nxt._d
        self.public_key, self.device_id, self.epoch = nxt.public_key, nxt.device_id, 0
        self.health = nxt.health
        nxt._prk, nxt._d, nxt._live = bytearray(0), None, False
        self.successor = None
        self.pending = None

    def _check(self) -> None:
        if not self._live:
            raise IdentityWiped("identity was wiped; boot again to use it")

    def _key(self) -> int:
        self._check()
        if _TYPE_CHECKING:
            assert self._d is not None  # wipe() drops it with _live
        return self._d

    def seed(self, i: int) -> bytes:
        # Seed i (0..7) for this device's owners and keys: never print, log or store it.
        if not 0 <= i < SEEDS:
            raise ValueError("seed index 0..7")
        self._check()
        return hkdf_expand(self._prk, _SEED_INFO + str(i).encode(), _SEED_LEN)

    def sign_digest(self, digest32: bytes) -> bytes:
        # ECDSA P-256 with RFC 6979 nonces hedged with DRBG output (RFC 6979 3.6 additional data).
        from qdid import p256

        extra = entropy.random_bytes(32) if entropy.ready() else b""
        return p256.sign_digest(self._key(), digest32, extra)

    def csr(self) -> bytes:
        from qdid import der

        return der.csr(self._key(), self.public_key, self.device_id)

    def private_key_der(self) -> bytes:
        # SEC1 DER for tls.SSLContext.load_cert_chain: RAM only, never written.
        from qdid import der

        return der.ec_private_key(self._key(), self.public_key)

    def wipe(self) -> None:
        for i in range(len(self._prk)):
            self._prk[i] = 0
        self._live = False
        self._d = None
        if self.successor is not None:
            self.successor.wipe()


def boot(board: Board, data_dir: str = "data") -> Identity:
    # The SRAM first: on a real board the power-up region is read before anything else runs
    # (the C stack and the heap only grow from here on).
    # The fuzzy extractor (tables, buffers and decoder: 7-12 KiB) is loaded for the boot only,
    # unless someone had it loaded before. One read serves every profile (the first 224 of the
    # 640 bytes are profiles 2 and 4's response).
    before = set(sys.modules)
    resp = bytearray(board.sram_bits(_RESPONSE_LEN))
    forget = getattr(board, "forget_sram", None)
    if forget:
        forget()  # the board keeps no copy once the response is ours
    nxt: tuple[bytes, bytes, dict[str, int]] | str | None = None
    try:
        # The owner state says which seed is the key, and whether a re-enrolment waits.
        from qdid import owner

        epoch, pending, _ = owner.load(data_dir)
        if pending != owner.REENROL:
            owner.commit_next(data_dir)
        # The extractor's buffers before anything else fragments the heap, and after a collection:
        # the SRAM read leaves garbage (the unix board's silicon model, a board's word-by-word
        # copy) that would otherwise split the heap under the decoder's 2-4 KiB buffer.
        path = data_dir + "/" + _HELPER
        helper = files.read(path)
        gc.collect()
        fe = _extractor(helper[0] if helper else _ENROL_PROFILE)
        if not entropy.ready():
            entropy.init(board)
        try:
            check_sram(resp)
        except SramHealthError:
            _count_failure(data_dir)
            raise
        if helper is None:
            if not board.cold_boot():
                _count_failure(data_dir)
                raise EnrolmentRefused(
                    "enrolment needs a power-on SRAM state and this was a warm reset; remove "
                    "power from the board, then boot it again"
                )
            # A new set of seeds: owner state a lost helper left behind means nothing for it.
            owner.reset(data_dir)
            epoch, pending = 0, None
            helper, secret, health = _enrol(fe, resp, path, data_dir)
        else:
            try:
                secret = fe.reproduce(resp, helper)
            except fe.ReconstructionError:
                _count_failure(data_dir)
                if not board.cold_boot():
                    raise fe.ReconstructionError(
                        "identity not reconstructed after a warm reset (the SRAM was overwritten "
                        "since power-on); remove power from the board, then boot it again"
                    )
                raise
            health = dict(fe.stats)
            health["corrected_limit"] = _MAX_RAW_BER_PCT * fe.RAW_BITS // 100
            if health["corrected_bits"] * 100 > _MAX_RAW_BER_PCT * fe.RAW_BITS:
                # The key came out right, but the SRAM is far noisier than any healthy die
                # (ageing, out-of-range supply or temperature, or probing): fail closed before
                # it fails open-endedly.
                _count_failure(data_dir)
                raise SramHealthError(
                    "SRAM power-up noise is %d%% of the bits, above %d%%: the PUF is out of its "
                    "operating range (temperature, supply, ageing); boot in range or re-enrol"
                    % (health["corrected_bits"] * 100 // fe.RAW_BITS, _MAX_RAW_BER_PCT)
                )
            if pending == owner.REENROL:
                fe = None
                nxt = _successor(board, resp, owner.next_path(data_dir), data_dir)
    finally:
        for i in range(len(resp)):
            resp[i] = 0
    health["health_failures"] = health_failures(data_dir)
    prk = hkdf_extract(hashlib.sha256(helper).digest(), secret)
    secret = None
    helper = None
    fe = None
    del owner  # its module goes with _drop
    nxt_prk = None
    if isinstance(nxt, tuple):
        nxt_health = nxt[2]
        nxt_health["health_failures"] = health["health_failures"]
        nxt_prk = hkdf_extract(hashlib.sha256(nxt[0]).digest(), nxt[1])
        nxt = None  # the next secret goes with the tuple that held it
    _drop(before)
    ident = Identity(prk, health, epoch)
    ident.pending = pending
    if nxt_prk is not None:
        ident.successor = Identity(nxt_prk, nxt_health)
    else:
        ident.successor_error = nxt
    return ident


def _enrol(fe, resp, path, data_dir):
    # Fresh helper data from this power-up read (the die must be in its power-up state: callers
    # check for a cold boot): a random key encoded under the response, the helper written whole
    # and read back. -> (helper, secret, health).
    key = bytearray(entropy.random_bytes(fe.KEY_LEN))
    try:
        helper, secret = fe.enrol(resp, key)
    except QdidError:
        # The extractor refused the die (profile 5: too biased): a health failure.
        _count_failure(data_dir)
        raise
    finally:
        for i in range(len(key)):
            key[i] = 0
    files.write(path, helper)
    if files.read(path) != helper:
        raise QdidError("helper data did not read back as written; check the filesystem")
    limit = _MAX_RAW_BER_PCT * fe.RAW_BITS // 100
    return (
        helper,
        secret,
        {
            "corrected_bits": 0,
            "code_errors": 0,
            "margin": fe.MARGIN_MAX,
            "corrected_limit": limit,
        },
    )


def _successor(board, resp, path, data_dir):
    # A pending re-enrolment: the next set's secret from the read that gave the current one.
    # helper.new written by an earlier power-on is reconstructed, never replaced (the server may
    # hold its key already); without one, fresh helper data is enrolled and written first.
    # -> (helper, secret, health), or a sentence saying why not at this boot (the current
    # identity runs meanwhile and the step stays pending).
    if not board.cold_boot():
        return "a re-enrolment reads a power-on SRAM state and this was a warm reset"
    helper = files.read(path)
    gc.collect()
    fe = _extractor(helper[0] if helper else _ENROL_PROFILE)
    try:
        if helper is None:
            return _enrol(fe, resp, path, data_dir)
        secret = fe.reproduce(resp, helper)
    except QdidError as e:
        if helper is not None:
            _count_failure(data_dir)  # _enrol counted its own
        return "%s: %s" % (type(e).__name__, e)
    return helper, secret, dict(fe.stats)


def _drop(before: set[str]) -> None:
    # Lifecycle modules: the extractor loaded for this boot goes, its heap back to the pool.
    import qdid

    for name in (
        "qdid.fuzzy",
        "qdid.polar",
        "qdid.debias",
        "qdid.polarsc",
        "qdid.offset",
        "qdid.owner",
    ):
        if name in sys.modules and name not in before:
            del sys.modules[name]
            short = name[5:]
            if short in qdid.__dict__:
                delattr(qdid, short)
    gc.collect()
