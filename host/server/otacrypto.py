"""The payload's encryption and the content key's wrap for one device (docs/ota.md): what the
device's firmware mirrors byte for byte, so each construction is written once, here.

payload.bin = IV || AES-256-CBC(k_enc, IV, files || PKCS#7) || HMAC-SHA256(k_mac, label ||
release ID || 0 || IV || ciphertext), with k_enc || k_mac = HKDF-SHA256(CK): encrypt-then-MAC,
so a device checks the tag before it decrypts a byte. The wrap: an ephemeral ECDH with the
device's OTA key, HKDF salted with SHA-256(release ID) and bound to the device ID, CK xor the
first half, an HMAC tag under the second.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping

from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from host.server.otamanifest import ReleaseError

CONTENT_INFO = b"qlink-ota-content-v1"
PAYLOAD_LABEL = b"qlink-ota-payload-v1\x00"
WRAP_INFO = b"qlink-ota-wrap-v1\x00"
_IV = 16
_TAG = 32


class PayloadAltered(ReleaseError):
    """The payload tag does not hold (the device's `altered`)."""

    code = "altered"


class WrongDevice(ReleaseError):
    """The wrap tag does not hold for this device's key (the device's `wrong_device`)."""

    code = "wrong_device"


# -- the payload and the content key -----------------------------------------------------------
def _hkdf(ikm: bytes, salt: bytes | None, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=64, salt=salt, info=info).derive(ikm)


def _payload_tag(k_mac: bytes, rid: str, iv: bytes, ciphertext: bytes) -> bytes:
    msg = PAYLOAD_LABEL + rid.encode("ascii") + b"\x00" + iv + ciphertext
    return hmac.new(k_mac, msg, hashlib.sha256).digest()


def encrypt_payload(
    rid: str,
    plaintext_files: Iterable[bytes],
    *,
    ck: bytes | None = None,
    iv: bytes | None = None,
) -> tuple[bytes, bytes]:
    """(CK, payload.bin): IV || AES-256-CBC(k_enc, IV, files || PKCS#7) || tag, with k_enc and
    k_mac from HKDF-SHA256(CK) and the tag an HMAC-SHA256 over the release ID, IV and
    ciphertext (encrypt-then-MAC). `ck` and `iv` are random unless given (test vectors)."""
    ck = secrets.token_bytes(32) if ck is None else ck
    iv = secrets.token_bytes(_IV) if iv is None else iv
    if len(ck) != 32 or len(iv) != _IV:
        raise ReleaseError("the content key is 32 bytes and the IV 16")
    keys = _hkdf(ck, None, CONTENT_INFO)
    k_enc, k_mac = keys[:32], keys[32:]
    padder = padding.PKCS7(128).padder()
    padded = padder.update(b"".join(plaintext_files)) + padder.finalize()
    enc = Cipher(algorithms.AES(k_enc), modes.CBC(iv)).encryptor()
    ciphertext = enc.update(padded) + enc.finalize()
    return ck, iv + ciphertext + _payload_tag(k_mac, rid, iv, ciphertext)


def decrypt_payload(rid: str, ck: bytes, payload: bytes) -> bytes:
    """The plaintext (every file, concatenated), after the tag holds; PayloadAltered if not."""
    if len(payload) < _IV + 16 + _TAG or (len(payload) - _IV - _TAG) % 16:
        raise PayloadAltered("the payload's length is not that of one")
    keys = _hkdf(ck, None, CONTENT_INFO)
    k_enc, k_mac = keys[:32], keys[32:]
    iv, ciphertext, tag = payload[:_IV], payload[_IV:-_TAG], payload[-_TAG:]
    if not hmac.compare_digest(_payload_tag(k_mac, rid, iv, ciphertext), tag):
        raise PayloadAltered("the payload's tag does not hold (altered, or another release's)")
    dec = Cipher(algorithms.AES(k_enc), modes.CBC(iv)).decryptor()
    padded = dec.update(ciphertext) + dec.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise PayloadAltered("the payload's padding is wrong") from None


def ota_public_key(point: bytes) -> ec.EllipticCurvePublicKey:
    """An OTA key (65 bytes, uncompressed P-256 point); ValueError if not on the curve."""
    if len(point) != 65 or point[0] != 4:
        raise ValueError("not an uncompressed P-256 point")
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)


def _kek(z: bytes, rid: str, device_id: str) -> bytes:
    salt = hashlib.sha256(rid.encode("ascii")).digest()
    return _hkdf(z, salt, WRAP_INFO + device_id.encode("ascii"))


def _uncompressed(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def wrap_key(
    rid: str,
    device_id: str,
    ota_pub65: bytes,
    ck: bytes,
    *,
    ephemeral: ec.EllipticCurvePrivateKey | None = None,
) -> dict[str, str]:
    """CK wrapped for one device: {"epk", "key", "tag"} (hex), per docs/ota.md."""
    peer = ota_public_key(ota_pub65)
    e = ephemeral or ec.generate_private_key(ec.SECP256R1())
    kek = _kek(e.exchange(ec.ECDH(), peer), rid, device_id)
    epk = _uncompressed(e.public_key())
    key = bytes(a ^ b for a, b in zip(ck, kek[:32], strict=True))
    tag = hmac.new(kek[32:], epk + key, hashlib.sha256).digest()
    return {"epk": epk.hex(), "key": key.hex(), "tag": tag.hex()}


def unwrap_key(
    rid: str, device_id: str, ota_private: ec.EllipticCurvePrivateKey, wrap: Mapping[str, str]
) -> bytes:
    """CK from a wrap, as the device recovers it; WrongDevice when the tag does not hold."""
    try:
        epk, key, tag = (bytes.fromhex(wrap[k]) for k in ("epk", "key", "tag"))
        peer = ota_public_key(epk)
    except (KeyError, ValueError, TypeError):
        raise WrongDevice("the wrap is malformed") from None
    kek = _kek(ota_private.exchange(ec.ECDH(), peer), rid, device_id)
    want = hmac.new(kek[32:], epk + key, hashlib.sha256).digest()
    if len(key) != 32 or not hmac.compare_digest(want, tag):
        raise WrongDevice("the wrap's tag does not hold for this device's key")
    return bytes(a ^ b for a, b in zip(key, kek[:32], strict=True))
