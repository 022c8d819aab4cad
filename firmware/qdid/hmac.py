# HMAC-SHA256 (RFC 2104) and HKDF-SHA256 (RFC 5869) over hashlib.sha256.
# MicroPython has no hmac module, so this is the one place both live.
from micropython import const
import hashlib

_BLOCK = const(64)  # SHA-256 block size, bytes (FIPS 180-4)
_HLEN = const(32)  # SHA-256 output size, bytes

# XOR tables for the inner/outer pads (RFC 2104 section 2), built once.
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def _pads(key):
    # Keys longer than the block are hashed first (RFC 2104 section 3).
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    k = bytearray(_BLOCK)
    k[: len(key)] = key
    ipad = bytes(_IPAD[b] for b in k)
    opad = bytes(_OPAD[b] for b in k)
    for i in range(_BLOCK):  # the padded key is key material: wipe the copy
        k[i] = 0
    return ipad, opad


def hmac_sha256(key, msg):
    ipad, opad = _pads(key)
    h = hashlib.sha256(ipad)
    h.update(msg)
    inner = h.digest()
    h = hashlib.sha256(opad)
    h.update(inner)
    return h.digest()


def hkdf_extract(salt, ikm):
    # An absent salt is HashLen zero bytes (RFC 5869 section 2.2).
    if not salt:
        salt = bytes(_HLEN)
    return hmac_sha256(salt, ikm)


def hkdf_expand(prk, info, length):
    # L <= 255 * HashLen (RFC 5869 section 2.3).
    if length < 0 or length > 255 * _HLEN:
        raise ValueError
    ipad, opad = _pads(prk)
    out = bytearray()
    t = b""
    i = 1
    while len(out) < length:
        h = hashlib.sha256(ipad)
        h.update(t)
        h.update(info)
        h.update(bytes((i,)))
        inner = h.digest()
        h = hashlib.sha256(opad)
        h.update(inner)
        t = h.digest()
        out.extend(t)
        i += 1
    return bytes(out[:length])


def hkdf(ikm, salt, info, length):
    return hkdf_expand(hkdf_extract(salt, ikm), info, length)


def compare_digest(a, b):
    # Constant time in the content: every byte is visited whatever differs.
    # Lengths are public (digests and MACs have fixed sizes).
    if len(a) != len(b):
        return False
    acc = 0
    for i in range(len(a)):
        acc |= a[i] ^ b[i]
    return acc == 0
