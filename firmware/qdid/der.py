# Minimal DER (X.690) writer for the device: a PKCS#10 CSR (RFC 2986), an RFC 5915 ECPrivateKey
# for tls.SSLContext.load_cert_chain and ECDSA-Sig-Value signatures. Reading certificates is
# qdid.x509's job: the identity's boot path (key, CSR) never loads the reader.
from micropython import const
import hashlib
from qdid import QdidError

# qdid.p256 is imported where it is needed.

_SEQ = const(0x30)
_SET = const(0x31)
_INT = const(0x02)
_BITS = const(0x03)
_OCTETS = const(0x04)
_UTF8 = const(0x0C)
_CTX0 = const(0xA0)  # [0] constructed
_CTX1 = const(0xA1)  # [1] constructed
_MAX_CN = const(64)  # ub-common-name (RFC 5280 appendix A.1)

# Encoded OBJECT IDENTIFIERs (tag, length, value).
_OID_EC_PUBLIC_KEY = b"\x06\x07\x2a\x86\x48\xce\x3d\x02\x01"  # 1.2.840.10045.2.1 (RFC 5480)
_OID_P256 = b"\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07"  # 1.2.840.10045.3.1.7 prime256v1
_OID_ECDSA_SHA256 = b"\x06\x08\x2a\x86\x48\xce\x3d\x04\x03\x02"  # 1.2.840.10045.4.3.2 (RFC 5758)
_OID_CN = b"\x06\x03\x55\x04\x03"  # 2.5.4.3 id-at-commonName


class DerError(QdidError):
    pass


def _len(n):
    # Definite length, shortest form (X.690 8.1.3, 10.1).
    if n < 0x80:
        return bytes((n,))
    if n < 0x100:
        return bytes((0x81, n))
    return bytes((0x82, n >> 8, n & 0xFF))  # every structure written here is < 64 KiB


def _tlv(tag, body):
    return bytes((tag,)) + _len(len(body)) + body


def _uint(x):
    # Non-negative INTEGER in the fewest octets, a leading 0x00 when the top bit is set
    # (X.690 8.3.2).
    b = x.to_bytes(33, "big")
    i = 0
    while i < 32 and b[i] == 0 and b[i + 1] < 0x80:
        i += 1
    return _tlv(_INT, b[i:])


def _spki(pub65):
    # SubjectPublicKeyInfo with id-ecPublicKey and the named curve (RFC 5480 section 2).
    return _tlv(_SEQ, _tlv(_SEQ, _OID_EC_PUBLIC_KEY + _OID_P256) + _tlv(_BITS, b"\x00" + pub65))


def sig_to_der(sig64):
    # ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER } (RFC 5480 section 2.2 / RFC 3279).
    if not isinstance(sig64, (bytes, bytearray)) or len(sig64) != 64:
        raise DerError  # a raw P-256 signature is 64 bytes
    r = int.from_bytes(sig64[:32], "big")
    s = int.from_bytes(sig64[32:], "big")
    return _tlv(_SEQ, _uint(r) + _uint(s))


def _check_key(d, pub65):
    from qdid import p256

    if not p256.is_valid_public_key(pub65):
        raise DerError  # public key is not a 65-byte uncompressed P-256 point
    if not isinstance(d, int) or d < 1 or d >= p256.N:
        raise DerError  # private key out of [1, n-1]


def csr(d, pub65, common_name):
    # PKCS#10 CertificationRequest (RFC 2986 section 4): subject CN=<common_name> as UTF8String,
    # the EC public key, no attributes, signed with ecdsa-with-SHA256 (parameters absent,
    # RFC 5758 section 3.2).
    from qdid import p256

    _check_key(d, pub65)
    if not isinstance(common_name, str):
        raise DerError  # common name must be a str
    cn = common_name.encode()
    if not cn or len(common_name) > _MAX_CN:
        raise DerError  # common name must be 1..64 characters
    name = _tlv(_SEQ, _tlv(_SET, _tlv(_SEQ, _OID_CN + _tlv(_UTF8, cn))))
    info = _tlv(_SEQ, b"\x02\x01\x00" + name + _spki(pub65) + b"\xa0\x00")
    sig = p256.sign_digest(d, hashlib.sha256(info).digest())
    alg = _tlv(_SEQ, _OID_ECDSA_SHA256)
    return _tlv(_SEQ, info + alg + _tlv(_BITS, b"\x00" + sig_to_der(sig)))


def ec_private_key(d, pub65):
    # ECPrivateKey (RFC 5915 section 3): version 1, the 32-byte key, [0] the curve, [1] the
    # public key. The result holds the secret key: keep it in RAM only.
    _check_key(d, pub65)
    body = (
        b"\x02\x01\x01"
        + _tlv(_OCTETS, d.to_bytes(32, "big"))
        + _tlv(_CTX0, _OID_P256)
        + _tlv(_CTX1, _tlv(_BITS, b"\x00" + pub65))
    )
    return _tlv(_SEQ, body)
