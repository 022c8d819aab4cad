"""The platform CA: certificate profiles, key file permissions, chains that verify."""

from __future__ import annotations

import hashlib
import ipaddress
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from host.server.ca import ADMIN_CN, CaError, CertificateAuthority

KEYS = ("root", "issuing", "server", "broker", "admin")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path_factory.mktemp("ca") / "ca", "qlink.test")


def _device_csr(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.CertificateSigningRequest]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return key, csr


def _chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def _openssl_verify(ca: CertificateAuthority, cert: x509.Certificate, purpose: str) -> None:
    """OpenSSL's own path validation (root trusted, issuing CA untrusted, given purpose)."""
    leaf = ca.dir.parent / "leaf-under-test.pem"
    leaf.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    issuing = ca.dir / "issuing.pem"
    proc = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(ca.root_pem_path),
            "-untrusted",
            str(issuing),
            "-purpose",
            purpose,
            str(leaf),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith(": OK")


def test_key_files_are_0600(ca: CertificateAuthority) -> None:
    for name in KEYS:
        mode = stat.S_IMODE((ca.dir / f"{name}.key").stat().st_mode)
        assert mode == 0o600, name
    assert stat.S_IMODE(ca.dir.stat().st_mode) == 0o700


def test_no_temporary_files_left(ca: CertificateAuthority) -> None:
    assert not [p.name for p in ca.dir.iterdir() if p.name.startswith(".")]


def test_root_is_p256_ca_and_der_matches_pem(ca: CertificateAuthority) -> None:
    root = ca.root_cert
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert root.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    bc = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 1
    assert ca.root_der_path.read_bytes() == root.public_bytes(serialization.Encoding.DER)
    assert x509.load_pem_x509_certificate(ca.root_pem_path.read_bytes()) == root


def test_issuing_ca_is_signed_by_root(ca: CertificateAuthority) -> None:
    ca.issuing_cert.verify_directly_issued_by(ca.root_cert)
    bc = ca.issuing_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca and bc.path_length == 0
    assert _chain(ca.bundle_path) == [ca.issuing_cert, ca.root_cert]


def test_server_chain_verifies_for_each_name(ca: CertificateAuthority) -> None:
    leaf, issuing = _chain(ca.cert_path("server"))
    assert issuing == ca.issuing_cert
    store = Store([ca.root_cert])
    for name in ("localhost", "qlink.test"):
        verifier = PolicyBuilder().store(store).build_server_verifier(x509.DNSName(name))
        verifier.verify(leaf, [issuing])
    ip = ipaddress.ip_address("127.0.0.1")
    PolicyBuilder().store(store).build_server_verifier(x509.IPAddress(ip)).verify(leaf, [issuing])
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_server_key_matches_certificate(ca: CertificateAuthority) -> None:
    key = serialization.load_pem_private_key(ca.key_path("server").read_bytes(), None)
    assert key.public_key() == _chain(ca.cert_path("server"))[0].public_key()


def test_admin_certificate_is_its_own_anchor_and_no_device_path(ca: CertificateAuthority) -> None:
    """The admin listener trusts the admin certificate alone; the devices' listener (root +
    issuing) does not take it."""
    path = ca.cert_path("admin")
    (leaf,) = _chain(path)
    assert leaf.subject.rfc4514_string() == f"CN={ADMIN_CN}" == leaf.issuer.rfc4514_string()
    alone = subprocess.run(
        ["openssl", "verify", "-purpose", "sslclient", "-CAfile", str(path), str(path)],
        capture_output=True,
        text=True,
    )
    assert alone.returncode == 0, alone.stderr
    with pytest.raises(AssertionError):
        _openssl_verify(ca, leaf, "sslclient")


def test_device_certificate_profile(ca: CertificateAuthority) -> None:
    key, csr = _device_csr("x")
    pub = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    device_id = hashlib.sha256(pub).hexdigest()
    cert = ca.issue_device(csr, device_id, validity_days=30)
    assert cert.subject.rfc4514_string() == f"CN={device_id}"
    assert cert.public_key() == key.public_key()
    assert 0 < cert.serial_number < 2**128
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert days == 30  # 30 days plus the 5-minute backdate
    _openssl_verify(ca, cert, "sslclient")


def test_a_device_certificate_names_its_tenant_as_ou_after_the_cn(
    ca: CertificateAuthority,
) -> None:
    _, csr = _device_csr("t")
    cert = ca.issue_device(csr, "d" * 64, 1, tenant="acme-2.x")
    assert [(a.oid, a.value) for a in cert.subject] == [
        (NameOID.COMMON_NAME, "d" * 64),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, "acme-2.x"),
    ]
    _openssl_verify(ca, cert, "sslclient")


@pytest.mark.parametrize("tenant", ["", "a/b", "a+b", "#", "a b", "-x", "x" * 65, "ü"])
def test_a_tenant_outside_the_name_rule_is_not_written_into_a_certificate(
    ca: CertificateAuthority, tenant: str
) -> None:
    _, csr = _device_csr("t")
    with pytest.raises(CaError, match="the tenant in a device certificate must be 1 to 64"):
        ca.issue_device(csr, "d" * 64, 1, tenant=tenant)


def test_device_serials_differ(ca: CertificateAuthority) -> None:
    _, csr = _device_csr("a")
    serials = {ca.issue_device(csr, "a", 1).serial_number for _ in range(20)}
    assert len(serials) == 20


def test_reload_keeps_every_certificate(ca: CertificateAuthority) -> None:
    before = {p.name: p.read_bytes() for p in ca.dir.iterdir()}
    again = CertificateAuthority.load_or_create(ca.dir, "qlink.test")
    assert again.root_cert == ca.root_cert
    assert {p.name: p.read_bytes() for p in ca.dir.iterdir()} == before


def test_new_public_host_reissues_only_service_certificates(tmp_path: Path) -> None:
    first = CertificateAuthority.load_or_create(tmp_path / "ca", "a.test")
    root, issuing = first.root_der(), first.issuing_der()
    old_server = first.cert_path("server").read_bytes()
    second = CertificateAuthority.load_or_create(tmp_path / "ca", "b.test")
    assert (second.root_der(), second.issuing_der()) == (root, issuing)
    assert second.cert_path("server").read_bytes() != old_server
    san = _chain(second.cert_path("server"))[0].extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert "b.test" in san.value.get_values_for_type(x509.DNSName)


def test_missing_leaf_heals_on_next_start(tmp_path: Path) -> None:
    first = CertificateAuthority.load_or_create(tmp_path / "ca")
    first.cert_path("broker").unlink()
    second = CertificateAuthority.load_or_create(tmp_path / "ca")
    leaf = _chain(second.cert_path("broker"))[0]
    leaf.verify_directly_issued_by(second.issuing_cert)
    assert second.root_cert == first.root_cert


def test_load_without_ca_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CaError, match="start the server once"):
        CertificateAuthority.load(tmp_path / "nothing")


def test_device_certificate_requires_ec_key(ca: CertificateAuthority) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(key, None)
    )
    with pytest.raises(CaError, match="P-256"):
        ca.issue_device(csr, "x", 1)


# -- a damaged CA is an error, never a new CA --------------------------------------------------
def _files(ca_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(ca_dir.iterdir()) if p.is_file()}


@pytest.mark.parametrize(
    ("name", "damage", "problem"),
    [
        ("root.key", b"", "root.key is not an unencrypted PEM private key"),
        ("root.pem", b"garbage", "root.pem is not a PEM certificate"),
        ("root.key", None, "root.key is missing"),
        ("issuing.key", b"-----BEGIN", "issuing.key is not an unencrypted PEM private key"),
        ("issuing.pem", None, "issuing.pem is missing"),
    ],
)
def test_a_damaged_root_or_issuing_ca_is_an_error_and_nothing_is_replaced(
    tmp_path: Path, name: str, damage: bytes | None, problem: str
) -> None:
    ca_dir = tmp_path / "ca"
    CertificateAuthority.load_or_create(ca_dir)
    if damage is None:
        (ca_dir / name).unlink()
    else:
        (ca_dir / name).write_bytes(damage)
    before = _files(ca_dir)
    which = name.split(".")[0]
    for attempt in (CertificateAuthority.load_or_create, CertificateAuthority.load):
        with pytest.raises(CaError) as info:
            attempt(ca_dir)
        assert f"the {which} CA in {ca_dir} is damaged ({problem})" in str(info.value)
        assert "restore" in str(info.value)
        assert _files(ca_dir) == before  # no new root, no new issuing CA


def test_an_issuing_ca_of_another_root_is_an_error(tmp_path: Path) -> None:
    mine, other = tmp_path / "mine", tmp_path / "other"
    CertificateAuthority.load_or_create(mine)
    CertificateAuthority.load_or_create(other)
    for part in ("issuing.pem", "issuing.key"):
        (mine / part).write_bytes((other / part).read_bytes())
    before = _files(mine)
    with pytest.raises(CaError, match=r"issuing\.pem is not issued by root\.pem"):
        CertificateAuthority.load_or_create(mine)
    assert _files(mine) == before


def test_a_token_that_does_not_open_leaves_the_ca_as_it_was(tmp_path: Path) -> None:
    from host.server.hsm import HsmError, Pkcs11Config

    ca_dir = tmp_path / "ca"
    CertificateAuthority.load_or_create(ca_dir)
    before = _files(ca_dir)
    bad = Pkcs11Config(module=str(tmp_path / "nonexistent.so"), token="t", pin="1")
    with pytest.raises(HsmError, match="cannot open PKCS#11 token"):
        CertificateAuthority.load_or_create(ca_dir, hsm=bad)
    assert _files(ca_dir) == before  # no issuing.pkcs11 marker: the files still serve
    CertificateAuthority.load(ca_dir)
