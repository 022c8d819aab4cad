# HMAC_DRBG with SHA-256 (NIST SP 800-90A Rev.1 section 10.1.2), security strength 256 bits.
# Feeds challenges and hedging data; its entropy input comes from the health-tested, SHA-256
# conditioned board noise (qdid.entropy).
# Prediction resistance (9.3.1) is the caller's reseed right before a generate without
# additional input, as the CAVP pr_true vectors run it (tests/firmware/test_drbg.py).
from micropython import const
from qdid import QdidError
from qdid.hmac import hmac_sha256

_OUTLEN = const(32)  # SHA-256 output, bytes
_MIN_ENTROPY = const(32)  # security_strength / 8: 256-bit strength (SP 800-90A 10.1, table 2)
MAX_REQUEST = const(4096)  # bytes per generate; 90A allows 2^19 bits (64 KiB), a device needs less
_RESEED_INTERVAL = const(10000)  # generate calls between reseeds; 90A allows up to 2^48


class DrbgError(QdidError):
    pass


class ReseedRequired(DrbgError):
    # SP 800-90A 9.3.1 step 7: the reseed counter passed the reseed interval.
    pass


class RequestTooLarge(DrbgError):
    # SP 800-90A 9.3.1 step 2: more than max_number_of_bits_per_request (MAX_REQUEST bytes).
    # The size asked for is public, so the message names it and the limit.
    pass


class HmacDrbg:
    def __init__(self, entropy, nonce=b"", personalization=b"", reseed_interval=_RESEED_INTERVAL):
        # Instantiate (10.1.2.3): seed_material = entropy || nonce || personalization.
        if len(entropy) < _MIN_ENTROPY:
            raise DrbgError  # entropy input shorter than the security strength
        if reseed_interval < 1:
            raise DrbgError  # a reseed interval counts generate calls: at least one
        self._interval = reseed_interval
        self._k = bytes(_OUTLEN)
        self._v = b"\x01" * _OUTLEN
        self._update(bytes(entropy) + bytes(nonce) + bytes(personalization))
        self._counter = 1

    def _update(self, data):
        # HMAC_DRBG_Update (10.1.2.2).
        k = hmac_sha256(self._k, self._v + b"\x00" + data)
        v = hmac_sha256(k, self._v)
        if data:
            k = hmac_sha256(k, v + b"\x01" + data)
            v = hmac_sha256(k, v)
        self._k = k
        self._v = v

    def reseed(self, entropy, additional=b""):
        # Reseed (10.1.2.4): seed_material = entropy || additional_input.
        if len(entropy) < _MIN_ENTROPY:
            raise DrbgError  # entropy input shorter than the security strength
        self._update(bytes(entropy) + bytes(additional))
        self._counter = 1

    def generate(self, n, additional=b""):
        # Generate (10.1.2.5).
        if n < 0:
            raise DrbgError  # a negative length is a caller's bug
        if n > MAX_REQUEST:
            raise RequestTooLarge(
                "HMAC_DRBG: at most %d bytes per request, asked for %d; split the request"
                % (MAX_REQUEST, n)
            )
        if self._counter > self._interval:
            raise ReseedRequired
        additional = bytes(additional)
        if additional:
            self._update(additional)
        out = bytearray(n)
        v = self._v
        k = self._k
        for i in range(0, n, _OUTLEN):
            v = hmac_sha256(k, v)
            out[i : i + _OUTLEN] = v[: n - i]
        self._v = v
        self._update(additional)
        self._counter += 1
        return bytes(out)
