"""Purpose keys: signing keys the platform root certifies itself for one use alone (an extended
key usage and no other), so a device checks what they sign with the one key it pins. The
command signer (host/server/commands.py) and the release key (host/server/releases.py) are two.

Each has `ca/<name>.pem` and, in a file, `ca/<name>.key` (0600), made on first use. A certificate
that is missing, not the root's, of another usage or within 30 days of its end is issued again
over the same key: devices that learned the key keep trusting what it signs. With a PKCS#11
token the key lives there under a label of its own and no key file exists.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from host.server.ca import CaError, CertificateAuthority
from host.server.files import atomic_write
from host.server.hsm import Pkcs11Config, Pkcs11Key

RENEW_BEFORE = dt.timedelta(days=30)

AnyKey = ec.EllipticCurvePrivateKey | Pkcs11Key


def raw_signature(key: AnyKey, data: bytes) -> bytes:
    """ECDSA P-256 / SHA-256 over `data` as r || s (32 bytes each, big-endian): the form the
    firmware checks."""
    if isinstance(key, Pkcs11Key):
        der = key.sign(data)
    else:
        der = key.sign(data, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def file_key(
    ca: CertificateAuthority, name: str, subject: str, eku: x509.ObjectIdentifier
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The purpose key `name` in `ca/<name>.key` with its certificate, made or renewed."""
    cert_path, key_path = ca.dir / f"{name}.pem", ca.dir / f"{name}.key"
    key = _load_key(key_path)
    cert = _load_cert(cert_path)
    if key is not None and cert is not None and key.public_key() == cert.public_key():
        if usable(cert, ca.root_cert, eku):
            return cert, key
    if key is None:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Key first: a crash between the two writes leaves a key without its certificate,
        # which the next start certifies (never a certificate naming a key that is gone).
        atomic_write(key_path, pem, 0o600)
    cert = ca.root_issued(subject, key.public_key(), eku)
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def token_key(
    ca: CertificateAuthority,
    name: str,
    subject: str,
    eku: x509.ObjectIdentifier,
    hsm: Pkcs11Config,
    label: str,
) -> tuple[x509.Certificate, Pkcs11Key]:
    """The purpose key `name` in the PKCS#11 token of `hsm`, labelled `label` (made there if
    missing), with its certificate in `ca/<name>.pem`."""
    key = Pkcs11Key.open(dataclasses.replace(hsm, key_label=label))
    cert_path = ca.dir / f"{name}.pem"
    cert = _load_cert(cert_path)
    if cert is not None and cert.public_key() == key.public_key():
        if usable(cert, ca.root_cert, eku):
            return cert, key
    cert = ca.root_issued(subject, key.public_key(), eku)
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def usable(cert: x509.Certificate, root: x509.Certificate, eku: x509.ObjectIdentifier) -> bool:
    """Issued by `root`, for `eku` and nothing else, and not within RENEW_BEFORE of its end."""
    try:
        cert.verify_directly_issued_by(root)
        found = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    now = dt.datetime.now(dt.UTC)
    return list(found) == [eku] and cert.not_valid_after_utc - now > RENEW_BEFORE


def _load_key(key_path: Path) -> ec.EllipticCurvePrivateKey | None:
    """The key, or None when there is no file yet. A file that is not a P-256 key is a CaError:
    a new key would be one that devices have not learned (the command signer's)."""
    try:
        data = key_path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise CaError(
            f"{key_path} is not an unencrypted PEM P-256 private key; restore it from a backup, "
            "or remove it (and its .pem) to make a new one that devices must learn again"
        )
    return key


def _load_cert(cert_path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return None
