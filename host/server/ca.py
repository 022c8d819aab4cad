"""The platform CA: a root, an issuing CA, the service certificates and device certificates.

Layout of `data_dir/ca/` (keys 0600, everything written atomically):
    root.pem root.der root.key        self-signed root (P-256); root.der is what devices pin
    issuing.pem issuing.key           issuing CA, signed by the root; signs every leaf
    bundle.pem                        root + issuing, the broker's `cafile`
    server.pem server.key             HTTPS leaf + issuing CA (the chain the server serves)
    broker.pem broker.key             the broker's TLS leaf + issuing CA
    admin.pem admin.key               self-signed client certificate (CN qlink-admin) of the
                                      server's own MQTT connections: the only trust anchor of
                                      the broker's admin listener, and no device's
    crl.der crl.pem                   the issuing CA's CRL, rewritten on every revocation and
                                      re-signed before it expires (the broker's `crlfile`)
Each item is loaded when present and consistent, created otherwise, so a crash between two
writes heals on the next start.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from host.server import ServerError
from host.server.files import atomic_write
from host.server.hsm import Pkcs11Config, Pkcs11Key, sign_certificate, sign_crl
from host.server.store.names import NAME_RULE, is_name

ADMIN_CN = "qlink-admin"
# Device certificates may be short-lived (fractions of a day: renewal drills, tests).
MIN_VALIDITY_S = 60
_ROOT_DAYS = 3650
_ISSUING_DAYS = 1825
_SERVICE_DAYS = 825
# Devices' clocks may lag (no RTC until NTP): certificates start a little in the past.
_BACKDATE = dt.timedelta(minutes=5)


class CaError(ServerError):
    pass


@dataclass(frozen=True)
class Profile:
    """What a kind of leaf certificate may be used for (RFC 5280 4.2.1.3, 4.2.1.12)."""

    name: str
    eku: tuple[x509.ObjectIdentifier, ...]
    days: int


DEVICE_PROFILE = Profile("device", (ExtendedKeyUsageOID.CLIENT_AUTH,), 365)
SERVER_PROFILE = Profile("server", (ExtendedKeyUsageOID.SERVER_AUTH,), _SERVICE_DAYS)
ADMIN_PROFILE = Profile("admin", (ExtendedKeyUsageOID.CLIENT_AUTH,), _SERVICE_DAYS)
PROFILES = {p.name: p for p in (DEVICE_PROFILE, SERVER_PROFILE, ADMIN_PROFILE)}
CRL_NEXT_UPDATE = dt.timedelta(days=1)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def random_serial() -> int:
    """A random 128-bit serial, positive and non-zero (RFC 5280 4.1.2.2)."""
    return int.from_bytes(secrets.token_bytes(16), "big") or 1


def _name(cn: str, ou: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if ou is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    return x509.Name(attrs)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@dataclass(frozen=True)
class _Signer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | Pkcs11Key

    def sign(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        if isinstance(self.key, Pkcs11Key):
            return sign_certificate(builder, self.key)
        return builder.sign(self.key, hashes.SHA256())

    def sign_crl(
        self, builder: x509.CertificateRevocationListBuilder
    ) -> x509.CertificateRevocationList:
        if isinstance(self.key, Pkcs11Key):
            return sign_crl(builder, self.key)
        return builder.sign(self.key, hashes.SHA256())


def _builder(
    subject: x509.Name, issuer: _Signer | None, public_key: ec.EllipticCurvePublicKey, days: float
) -> x509.CertificateBuilder:
    now = _now()
    issuer_name = issuer.cert.subject if issuer else subject
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(random_serial())
        # Backdated for lagging device clocks, by at most a tenth of the life: the agent and
        # the server time renewal as a share of notBefore..notAfter, which a fixed 5 minutes
        # would swamp in a short-lived certificate.
        .not_valid_before(now - min(_BACKDATE, dt.timedelta(days=days) / 10))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    aki_key = issuer.cert.public_key() if issuer else public_key
    assert isinstance(aki_key, ec.EllipticCurvePublicKey)
    return b.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(aki_key), critical=False
    )


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf(
    builder: x509.CertificateBuilder, eku: list[x509.ObjectIdentifier]
) -> x509.CertificateBuilder:
    return (
        builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    )


def _service_sans(public_host: str) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(public_host)))
    except ValueError:
        if public_host != "localhost":
            names.append(x509.DNSName(public_host))
    loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    if loopback not in names:
        names.append(loopback)
    return x509.SubjectAlternativeName(names)


class CertificateAuthority:
    """The CA files under one directory; see the module docstring for the layout."""

    def __init__(self, ca_dir: Path, root: _Signer, issuing: _Signer) -> None:
        self.dir = ca_dir
        self._root = root
        self._issuing = issuing

    # -- paths -------------------------------------------------------------------------------
    @property
    def root_pem_path(self) -> Path:
        return self.dir / "root.pem"

    @property
    def root_der_path(self) -> Path:
        return self.dir / "root.der"

    @property
    def bundle_path(self) -> Path:
        return self.dir / "bundle.pem"

    def cert_path(self, service: str) -> Path:
        """`server`, `broker` or `admin`: the PEM with the leaf followed by the issuing CA."""
        return self.dir / f"{service}.pem"

    def key_path(self, service: str) -> Path:
        return self.dir / f"{service}.key"

    # -- certificates ------------------------------------------------------------------------
    @property
    def root_cert(self) -> x509.Certificate:
        return self._root.cert

    @property
    def issuing_cert(self) -> x509.Certificate:
        return self._issuing.cert

    def root_der(self) -> bytes:
        return self._root.cert.public_bytes(serialization.Encoding.DER)

    def issuing_der(self) -> bytes:
        return self._issuing.cert.public_bytes(serialization.Encoding.DER)

    def root_issued(
        self, subject: str, key: ec.EllipticCurvePublicKey, eku: x509.ObjectIdentifier
    ) -> x509.Certificate:
        """A leaf signed by the root itself, for one purpose (`eku`): what a device checks
        with the one key it pins (the command signer, host/server/commands.py)."""
        return self._root.sign(
            _leaf(_builder(_name(subject), self._root, key, _SERVICE_DAYS), [eku])
        )

    @classmethod
    def load(cls, ca_dir: Path, hsm: Pkcs11Config | None = None) -> CertificateAuthority:
        """Load an existing CA; CaError if there is none."""
        root = _load_signer(ca_dir, "root", keep=True)
        if hsm is None and (ca_dir / "issuing.pkcs11").exists():
            raise CaError(
                f"the issuing CA key of {ca_dir} is in a PKCS#11 token; "
                "set QLINK_PKCS11_MODULE, QLINK_PKCS11_TOKEN and QLINK_PKCS11_PIN"
            )
        issuing = (
            _load_signer(ca_dir, "issuing", keep=True) if hsm is None else _hsm_signer(ca_dir, hsm)
        )
        if root is None or issuing is None or not _issued_by(issuing.cert, root.cert):
            raise CaError(
                f"no complete CA in {ca_dir}; start the server once (qlink server) to create it"
            )
        return cls(ca_dir, root, issuing)

    @classmethod
    def load_or_create(
        cls, ca_dir: Path, public_host: str = "localhost", hsm: Pkcs11Config | None = None
    ) -> CertificateAuthority:
        """Load the CA, creating the root and issuing CA where there are none and the service
        leaves where they are missing, stale or not valid for the host. A root or issuing CA
        that is there but damaged is a CaError (devices trust it: it is never replaced).

        With `hsm`, the issuing CA's key lives in that PKCS#11 token (created there if missing)
        and no issuing.key file exists."""
        ca_dir.mkdir(parents=True, exist_ok=True)
        ca_dir.chmod(0o700)
        marker = ca_dir / "issuing.pkcs11"
        if hsm is None and marker.exists():
            raise CaError(
                f"the issuing CA key of {ca_dir} is in a PKCS#11 token ({marker.read_text()}); "
                "set QLINK_PKCS11_MODULE, QLINK_PKCS11_TOKEN and QLINK_PKCS11_PIN"
            )
        root = _load_signer(ca_dir, "root", keep=True)
        if root is None:
            root = _create_root(ca_dir)
        root_der = root.cert.public_bytes(serialization.Encoding.DER)
        der_path = ca_dir / "root.der"
        if not der_path.exists() or der_path.read_bytes() != root_der:
            atomic_write(der_path, root_der)
        if hsm is not None:
            issuing = _hsm_signer(ca_dir, hsm)  # opens the token: a bad module fails here
            if issuing is None or not _issued_by(issuing.cert, root.cert):
                issuing = _create_issuing(ca_dir, root, Pkcs11Key.open(hsm))
            # Only once the token served: a failed first try must leave the files as they were.
            atomic_write(marker, f"module={hsm.module} token={hsm.token}".encode())
        else:
            issuing = _load_signer(ca_dir, "issuing", keep=True)
            if issuing is None:
                issuing = _create_issuing(ca_dir, root)
            elif not _issued_by(issuing.cert, root.cert):
                raise _damaged(ca_dir, "issuing", "issuing.pem is not issued by root.pem")
        ca = cls(ca_dir, root, issuing)
        bundle = _pem(issuing.cert, root.cert)
        if not ca.bundle_path.exists() or ca.bundle_path.read_bytes() != bundle:
            atomic_write(ca.bundle_path, bundle)
        sans = _service_sans(public_host)
        for service in ("server", "broker"):
            ca._ensure_leaf(service, ExtendedKeyUsageOID.SERVER_AUTH, sans)
        ca._ensure_admin()
        return ca

    def _ensure_admin(self) -> None:
        """The admin client certificate, self-signed: the broker's admin listener trusts it
        alone, so a device certificate never opens that listener (nor the admin's the devices')."""
        current = _load_signer(self.dir, "admin")
        if (
            current is not None
            and _issued_by(current.cert, current.cert)
            and current.cert.not_valid_after_utc > _now() + dt.timedelta(days=30)
        ):
            return
        key = ec.generate_private_key(ec.SECP256R1())
        # No key usage extension: OpenSSL takes a self-signed certificate as its own issuer
        # only if a key usage, when present, allows certificate signing.
        cert = (
            _builder(_name(ADMIN_CN), None, key.public_key(), _SERVICE_DAYS)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(key, hashes.SHA256())
        )
        atomic_write(self.key_path("admin"), _key_pem(key), 0o600)
        atomic_write(self.cert_path("admin"), _pem(cert))

    def _ensure_leaf(
        self,
        service: str,
        eku: x509.ObjectIdentifier,
        sans: x509.SubjectAlternativeName | None,
    ) -> None:
        current = _load_signer(self.dir, service)
        if current is not None and _issued_by(current.cert, self._issuing.cert):
            have = None
            if sans is not None:
                try:
                    ext = current.cert.extensions.get_extension_for_class(
                        x509.SubjectAlternativeName
                    )
                    have = set(ext.value)
                except x509.ExtensionNotFound:
                    have = set()
            if sans is None or set(sans).issubset(have or set()):
                if current.cert.not_valid_after_utc > _now() + dt.timedelta(days=30):
                    return
        key = ec.generate_private_key(ec.SECP256R1())
        cn = ADMIN_CN if service == "admin" else f"qlink-{service}"
        b = _leaf(_builder(_name(cn), self._issuing, key.public_key(), _SERVICE_DAYS), [eku])
        if sans is not None:
            b = b.add_extension(sans, critical=False)
        cert = self._issuing.sign(b)
        atomic_write(self.key_path(service), _key_pem(key), 0o600)
        atomic_write(self.cert_path(service), _pem(cert, self._issuing.cert))

    def issue_device(
        self,
        csr: x509.CertificateSigningRequest,
        device_id: str,
        validity_days: float,
        tenant: str | None = None,
    ) -> x509.Certificate:
        """A client certificate for `device_id` over the CSR's (already verified) key, with
        subject CN=<device_id>, OU=<tenant>: the broker's qlink plugin gives the device the
        topics of that tenant alone (host/server/broker.py). Without a tenant, the subject is
        the CN alone, the form issued before tenants were written in."""
        if tenant is not None and not is_name(tenant):
            raise CaError(f"the tenant in a device certificate must be {NAME_RULE}")
        return self.issue(csr.public_key(), device_id, DEVICE_PROFILE, validity_days, ou=tenant)

    def issue(
        self,
        key: object,
        common_name: str,
        profile: Profile,
        validity_days: float | None = None,
        sans: x509.SubjectAlternativeName | None = None,
        ou: str | None = None,
    ) -> x509.Certificate:
        """A leaf of `profile` for an EC P-256 public key, signed by the issuing CA; `ou`, when
        given, follows the CN in the subject."""
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise CaError("the key must be an EC P-256 key")
        days = validity_days if validity_days is not None else profile.days
        if days * 86400 < MIN_VALIDITY_S:
            raise CaError("certificate validity must be at least one minute")
        b = _leaf(_builder(_name(common_name, ou), self._issuing, key, days), list(profile.eku))
        if sans is not None:
            b = b.add_extension(sans, critical=False)
        return self._issuing.sign(b)

    # -- revocation ----------------------------------------------------------------------------
    @property
    def crl_path(self) -> Path:
        return self.dir / "crl.der"

    def make_crl(self, revoked: list[tuple[int, float]], number: int | None = None) -> bytes:
        """The issuing CA's CRL (RFC 5280 5) over (serial, revocation time) pairs, DER."""
        now = _now()
        b = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self._issuing.cert.subject)
            .last_update(now - _BACKDATE)
            .next_update(now + CRL_NEXT_UPDATE)
            .add_extension(
                x509.CRLNumber(number if number is not None else time.time_ns() // 1000),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self._issuing.cert.public_key()  # type: ignore[arg-type]
                ),
                critical=False,
            )
        )
        for serial, at in revoked:
            b = b.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(dt.datetime.fromtimestamp(at, dt.UTC))
                .build()
            )
        crl = self._issuing.sign_crl(b)
        return crl.public_bytes(serialization.Encoding.DER)

    @property
    def crl_pem_path(self) -> Path:
        """The same CRL in PEM: the broker's `crlfile` (it refuses revoked certificates)."""
        return self.dir / "crl.pem"

    def publish_crl(self, revoked: list[tuple[int, float]]) -> bytes:
        der = self.make_crl(revoked)
        pem = x509.load_der_x509_crl(der).public_bytes(serialization.Encoding.PEM)
        atomic_write(self.crl_pem_path, pem)
        atomic_write(self.crl_path, der)
        return der

    def current_crl(self, revoked: list[tuple[int, float]]) -> bytes:
        """The published CRL, re-signed when missing or past half its lifetime."""
        try:
            der = self.crl_path.read_bytes()
            crl = x509.load_der_x509_crl(der)
            due = crl.next_update_utc
            if due is not None and due - _now() > CRL_NEXT_UPDATE / 2:
                return der
        except (FileNotFoundError, ValueError):
            pass
        return self.publish_crl(revoked)


def _load_signer(ca_dir: Path, name: str, *, keep: bool = False) -> _Signer | None:
    """`name`.pem with its `name`.key, or None. With `keep` (the root and the issuing CA, what
    devices and the broker trust), only when neither file exists: a pair that is half there,
    does not parse or does not match is a CaError, since replacing it would cut off every
    device. Other leaves are issued again when they do not load."""
    cert_path, key_path = ca_dir / f"{name}.pem", ca_dir / f"{name}.key"
    if not cert_path.exists() and not key_path.exists():
        return None
    problem = ""
    if not cert_path.exists() or not key_path.exists():
        problem = f"{(key_path if cert_path.exists() else cert_path).name} is missing"
    else:
        try:
            cert = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
        except (ValueError, IndexError):
            problem = f"{cert_path.name} is not a PEM certificate"
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (ValueError, TypeError):
            problem = problem or f"{key_path.name} is not an unencrypted PEM private key"
        if not problem and (
            not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key()
        ):
            problem = f"{key_path.name} is not the key of {cert_path.name}"
    if not problem:
        return _Signer(cert, key)  # type: ignore[arg-type]
    if keep:
        raise _damaged(ca_dir, name, problem)
    return None


def _damaged(ca_dir: Path, name: str, problem: str) -> CaError:
    return CaError(
        f"the {name} CA in {ca_dir} is damaged ({problem}); restore {name}.pem and {name}.key "
        "from a backup: a new one would cut off every device that trusts the current one"
    )


def _create_root(ca_dir: Path) -> _Signer:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(_name("qlink root CA"), None, key.public_key(), _ROOT_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .sign(key, hashes.SHA256())
    )
    atomic_write(ca_dir / "root.key", _key_pem(key), 0o600)
    atomic_write(ca_dir / "root.pem", _pem(cert))
    atomic_write(ca_dir / "root.der", cert.public_bytes(serialization.Encoding.DER))
    return _Signer(cert, key)


def _create_issuing(ca_dir: Path, root: _Signer, hsm_key: Pkcs11Key | None = None) -> _Signer:
    key: ec.EllipticCurvePrivateKey | Pkcs11Key = hsm_key or ec.generate_private_key(ec.SECP256R1())
    cert = root.sign(
        _builder(_name("qlink issuing CA"), root, key.public_key(), _ISSUING_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(), critical=True)
    )
    if isinstance(key, ec.EllipticCurvePrivateKey):
        atomic_write(ca_dir / "issuing.key", _key_pem(key), 0o600)
    atomic_write(ca_dir / "issuing.pem", _pem(cert))
    return _Signer(cert, key)


def _hsm_signer(ca_dir: Path, hsm: Pkcs11Config) -> _Signer | None:
    """The issuing certificate on disk with its key in the token, if they belong together."""
    key = Pkcs11Key.open(hsm)
    try:
        cert = x509.load_pem_x509_certificates((ca_dir / "issuing.pem").read_bytes())[0]
    except (FileNotFoundError, ValueError):
        return None
    if cert.public_key() != key.public_key():
        return None
    return _Signer(cert, key)
