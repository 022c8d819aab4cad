"""The issuing CA's key in a PKCS#11 token (an HSM; SoftHSM in the tests): the key never
leaves the token, the CA sends it the to-be-signed bytes.

cryptography signs certificates only with its own key objects, so a certificate or CRL is
built and signed once with a throwaway key, and its to-be-signed part is then signed by the
token and re-assembled (RFC 5280 4.1 / 5.1: SEQUENCE { tbs, algorithm, BIT STRING signature });
the algorithm (ecdsa-with-SHA256) is the same in both, so the to-be-signed bytes stay valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from host.server import ServerError

# AlgorithmIdentifier ecdsa-with-SHA256 (RFC 5758 3.2), DER.
_ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")


class HsmError(ServerError):
    pass


@dataclass(frozen=True)
class Pkcs11Config:
    module: str  # the PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so
    token: str  # token label
    pin: str  # user PIN (from the environment, never from a file in the data directory)
    key_label: str = "qlink-issuing"


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(body)) + body


def assemble(tbs: bytes, signature_der: bytes) -> bytes:
    """Certificate or CertificateList from its to-be-signed DER and an ECDSA-SHA256 signature."""
    return _tlv(0x30, tbs + _ECDSA_SHA256 + _tlv(0x03, b"\x00" + signature_der))


_OPEN: dict[Pkcs11Config, Pkcs11Key] = {}
# One logged-in session per token (module, label, PIN): its keys (the issuing CA's, the release
# key) share it, since a token takes one login per process.
_SESSIONS: dict[tuple[str, str, str], Any] = {}


class Pkcs11Key:
    """An EC P-256 private key in a token, usable where the CA signs. `open` keeps one
    logged-in session per token and key for the process (a token allows one login)."""

    @classmethod
    def open(cls, config: Pkcs11Config) -> Pkcs11Key:
        key = _OPEN.get(config)
        if key is None:
            key = _OPEN[config] = cls(config)
        return key

    def __init__(self, config: Pkcs11Config) -> None:
        try:
            import pkcs11
            from pkcs11 import Attribute, KeyType, ObjectClass
            from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters
        except ImportError as e:
            raise HsmError("python-pkcs11 is not installed; run: make setup") from e
        self._pkcs11 = pkcs11
        self._login = (config.module, config.token, config.pin)
        session = _SESSIONS.get(self._login)
        if session is None:
            try:
                lib = pkcs11.lib(config.module)
                token = lib.get_token(token_label=config.token)
                session = _SESSIONS[self._login] = token.open(user_pin=config.pin, rw=True)
            except Exception as e:  # the library raises many unrelated types: all "no token"
                raise HsmError(
                    f"cannot open PKCS#11 token {config.token!r} with {config.module} "
                    f"({type(e).__name__}); check the module path, token label and PIN"
                ) from None
        self._session: Any = session
        keys = list(
            self._session.get_objects(
                {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: config.key_label}
            )
        )
        pub: Any
        if keys:
            self._priv: Any = keys[0]
            pub = next(
                iter(
                    self._session.get_objects(
                        {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: config.key_label}
                    )
                )
            )
        else:
            params = self._session.create_domain_parameters(
                KeyType.EC,
                {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
                local=True,
            )
            pub, self._priv = params.generate_keypair(
                store=True, label=config.key_label, private_template={Attribute.SENSITIVE: True}
            )
        key = serialization.load_der_public_key(encode_ec_public_key(pub))
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise HsmError(f"token key {config.key_label!r} is not an EC key")
        self._public = key

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def sign(self, data: bytes) -> bytes:
        """ECDSA-SHA256 over `data`, DER (the token returns r || s). The digest is computed
        here and the token signs it with plain CKM_ECDSA, which every token has (SoftHSM 2.6
        lacks CKM_ECDSA_SHA256)."""
        import hashlib

        from pkcs11 import Mechanism
        from pkcs11.util.ec import encode_ecdsa_signature

        raw = self._priv.sign(hashlib.sha256(data).digest(), mechanism=Mechanism.ECDSA)
        return bytes(encode_ecdsa_signature(raw))

    def close(self) -> None:
        if _SESSIONS.get(self._login) is self._session:
            del _SESSIONS[self._login]
        self._session.close()


def sign_certificate(builder: x509.CertificateBuilder, key: Pkcs11Key) -> x509.Certificate:
    throwaway = ec.generate_private_key(ec.SECP256R1())
    tbs = builder.sign(throwaway, hashes.SHA256()).tbs_certificate_bytes
    return x509.load_der_x509_certificate(assemble(tbs, key.sign(tbs)))


def sign_crl(
    builder: x509.CertificateRevocationListBuilder, key: Pkcs11Key
) -> x509.CertificateRevocationList:
    throwaway = ec.generate_private_key(ec.SECP256R1())
    tbs = builder.sign(throwaway, hashes.SHA256()).tbs_certlist_bytes
    return x509.load_der_x509_crl(assemble(tbs, key.sign(tbs)))
