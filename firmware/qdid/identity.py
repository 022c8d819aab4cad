# The device identity: SRAM power-up state -> fuzzy extractor secret -> 8 seeds -> P-256 key.
#
#   boot(board, data_dir="data") -> Identity
#     first boot (no data/helper.bin): enrol, write the public helper data atomically;
#     later boots: reconstruct the same secret from a fresh power-up read.
#
# Seeds (docs/protocol.md "Identity"): PRK = HKDF-Extract(salt = SHA-256(helper.bin), secret)
# (RFC 5869 2.2); seed i = HKDF-Expand(PRK, b"qlink/seed/" + ASCII decimal i, 16), i = 0..7
# (RFC 5869 2.3). Each seed is a separate PRF output under its own label, so no seed follows from
# another seed plus public data. Seed 0 is the enrolment key: d = p256.scalar_from_seed(seed 0).
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
import os
import hashlib
import binascii
from qdid import QdidError
from qdid import fuzzy
from qdid import entropy
from qdid.hmac import hkdf_extract, hkdf_expand

SEEDS = const(8)  # seeds per device
_SEED_LEN = const(16)  # bytes per seed (128 bits)
_HW_MIN_PCT = const(35)  # power-up Hamming weight bounds, percent of the bits read
_HW_MAX_PCT = const(65)
_HELPER = "helper.bin"
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


def check_sram(resp):
    # Reject reads that cannot be a power-up state before they reach the fuzzy extractor.
    n = len(resp) * 8
    w = fuzzy.hamming_weight(resp)
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


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _write_atomic(path, data):
    # A power cut leaves either no helper.bin or a complete one: write a temporary file, then
    # rename it over the final name (rename is atomic on littlefs and POSIX).
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, path)


def _ensure_dir(path):
    try:
        os.stat(path)
    except OSError:
        os.mkdir(path)


class Identity:
    def __init__(self, prk):
        from qdid import p256

        self._prk = bytearray(prk)
        self._live = True
        self._d = p256.scalar_from_seed(self.seed(0))
        self.public_key = p256.public_key(self._d)
        self.device_id = binascii.hexlify(hashlib.sha256(self.public_key).digest()).decode()

    def _check(self):
        if not self._live:
            raise IdentityWiped("identity was wiped; boot again to use it")

    def _key(self):
        self._check()
        return self._d

    def seed(self, i):
        # Seed i (0..7) for this device's owners and keys: never print, log or store it.
        if not 0 <= i < SEEDS:
            raise ValueError("seed index 0..7")
        self._check()
        return hkdf_expand(self._prk, _SEED_INFO + str(i).encode(), _SEED_LEN)

    def sign_digest(self, digest32):
        # ECDSA P-256 with RFC 6979 nonces hedged with DRBG output (RFC 6979 3.6 additional data).
        from qdid import p256

        extra = entropy.random_bytes(32) if entropy.ready() else b""
        return p256.sign_digest(self._key(), digest32, extra)

    def csr(self):
        from qdid import der

        return der.csr(self._key(), self.public_key, self.device_id)

    def private_key_der(self):
        # SEC1 DER for tls.SSLContext.load_cert_chain: RAM only, never written.
        from qdid import der

        return der.ec_private_key(self._key(), self.public_key)

    def wipe(self):
        for i in range(len(self._prk)):
            self._prk[i] = 0
        self._live = False
        self._d = None


def boot(board, data_dir="data"):
    # The SRAM first: on a real board the power-up region is read before anything else runs
    # (the C stack and the heap only grow from here on).
    resp = board.sram_bits(fuzzy.RESPONSE_LEN)
    if not entropy.ready():
        entropy.init(board)
    path = data_dir + "/" + _HELPER
    helper = _read(path)
    if helper is None:
        if not board.cold_boot():
            raise EnrolmentRefused(
                "enrolment needs a power-on SRAM state and this was a warm reset; remove power "
                "from the board, then boot it again"
            )
        check_sram(resp)
        key = bytearray(entropy.random_bytes(16))
        helper, secret = fuzzy.enrol(resp, key)
        for i in range(len(key)):
            key[i] = 0
        _ensure_dir(data_dir)
        _write_atomic(path, helper)
        if _read(path) != helper:
            raise QdidError("helper data did not read back as written; check the filesystem")
    else:
        check_sram(resp)
        try:
            secret = fuzzy.reproduce(resp, helper)
        except fuzzy.ReconstructionError:
            if not board.cold_boot():
                raise fuzzy.ReconstructionError(
                    "identity not reconstructed after a warm reset (the SRAM was overwritten "
                    "since power-on); remove power from the board, then boot it again"
                )
            raise
    prk = hkdf_extract(hashlib.sha256(helper).digest(), secret)
    secret = None
    return Identity(prk)
