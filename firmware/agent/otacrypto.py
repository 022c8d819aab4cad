# The cryptography of an update (docs/ota.md "Release", "Wrapping the content key"), for
# agent.ota's step: the release key's certificate against the pinned root, the unwrap of the
# content key with this device's OTA key, and the payload tag, streamed. AES-256-CBC is
# cryptolib's (agent.ota decrypts in place, chunk by chunk). Everything here is loaded for the
# step only. Secrets: the wrap's shared secret, KEK and content key are dropped (the content key,
# a bytearray, zeroed) before returning; only k_enc || k_mac leaves, for this step's RAM.
import hashlib
from micropython import const
from qdid import p256
from qdid.hmac import hkdf, hmac_sha256, compare_digest

_TAG = const(32)  # HMAC-SHA256
_BLOCK = const(64)  # SHA-256 block, the HMAC key pad (RFC 2104)
_LABEL_TAG = b"qlink-ota-payload-v1\x00"  # domain separation of the payload tag
_INFO_CONTENT = b"qlink-ota-content-v1"  # HKDF info: content key -> k_enc || k_mac
_INFO_WRAP = b"qlink-ota-wrap-v1\x00"  # HKDF info prefix of the wrap's KEK (+ device ID)
# 2.25.230702443920874563719838064095364702917 "qlink firmware signing", as an encoded OID
# (X.690 8.19: 2*40+25, then base-128 groups).
_EKU_FIRMWARE = (
    b"\x06\x14\x69\x82\xdb\x8f\xd6\xaa\xff\x84\xec\xa6\x9e\xba\x90\x9c\xfd\x8a\xa7\xd3\xc5\x45"
)


def signer_key(cert, root_der):
    # The release key, when its certificate is signed (ECDSA P-256 / SHA-256) by the pinned root
    # itself and carries the firmware-signing usage and no other (docs/ota.md "Release"): no
    # TLS, command or CA key can sign firmware. Validity dates are not read: the device's clock
    # may be unset, and the key is renewed over the same key.
    from qdid import x509

    try:
        root = x509.cert_public_key(root_der)
        start, end, sig = x509.cert_signature(cert)
        key = x509.cert_public_key(cert)
        usage = x509.cert_ext_key_usage(cert)
    except x509.DerError:
        return None
    if usage != [_EKU_FIRMWARE]:
        return None
    if not p256.verify_digest(root, hashlib.sha256(cert[start:end]).digest(), sig):
        return None
    return key


def unwrap(epk, key, tag, release, device_id, d):
    # docs/ota.md "Wrapping the content key": Z = ECDH(d_ota, epk); KEK = HKDF(Z, SHA-256(release),
    # label || device ID, 64); the tag HMAC(KEK[32:], epk || key) must hold (else this wrap is
    # for another device or release); CK = key xor KEK[:32]; k_enc || k_mac = HKDF(CK, empty,
    # content label, 64). -> k_enc || k_mac (64 bytes), or None.
    try:
        z = p256.ecdh(d, epk)
    except ValueError:
        return None  # not a point on the curve
    salt = hashlib.sha256(release.encode()).digest()
    kek = hkdf(z, salt, _INFO_WRAP + device_id.encode(), 64)
    if not compare_digest(hmac_sha256(kek[32:], epk + key), tag):
        return None
    ck = bytearray(32)
    for i in range(32):
        ck[i] = key[i] ^ kek[i]
    keys = hkdf(ck, b"", _INFO_CONTENT, 64)
    for i in range(32):  # the content key itself is needed no more
        ck[i] = 0
    return keys


def tag_ok(path, k_mac, release, n, buf):
    # Step 4's tag over the payload file, streamed through buf: HMAC-SHA256 (RFC 2104) with k_mac
    # of label || release || 0 || IV || ciphertext (the file's first n bytes), against the
    # file's last 32 bytes, compared in constant time.
    k = bytearray(_BLOCK)
    k[: len(k_mac)] = k_mac
    for i in range(_BLOCK):
        k[i] ^= 0x36  # ipad
    inner = hashlib.sha256(k)
    for i in range(_BLOCK):
        k[i] ^= 0x36 ^ 0x5C  # opad
    outer = hashlib.sha256(k)
    for i in range(_BLOCK):
        k[i] = 0  # the padded key is key material
    inner.update(_LABEL_TAG)
    inner.update(release.encode())
    inner.update(b"\x00")
    mv = memoryview(buf)
    with open(path, "rb") as f:
        left = n
        while left:
            got = f.readinto(buf if left >= len(buf) else mv[:left])
            if not got:
                return False  # shorter than the release: not this payload
            inner.update(buf if got == len(buf) else mv[:got])
            left -= got
        stored = f.read(_TAG)
    outer.update(inner.digest())
    return compare_digest(outer.digest(), stored)
