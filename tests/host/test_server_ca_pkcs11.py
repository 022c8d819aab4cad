"""The issuing CA's key in a PKCS#11 token (SoftHSM from Debian): certificates and CRLs it signs
verify, the key never appears on disk, and a restart finds the same key and certificate."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from hil.simdevice import SimDevice, make_csr
from host.server.ca import CertificateAuthority
from host.server.hsm import HsmError, Pkcs11Config

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "1234"


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pkcs11Config]:
    """One token for the module: the PKCS#11 library reads its configuration once a process."""
    if not Path(MODULE).exists() or shutil.which("softhsm2-util") is None:
        pytest.skip("SoftHSM is not installed (apt-get install softhsm2)")
    base = tmp_path_factory.mktemp("hsm")
    tokens = base / "tokens"
    tokens.mkdir()
    conf = base / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    mp = pytest.MonkeyPatch()
    mp.setenv("SOFTHSM2_CONF", str(conf))
    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            "qlink",
            "--so-pin",
            "0000",
            "--pin",
            PIN,
        ],
        check=True,
        capture_output=True,
    )
    yield Pkcs11Config(MODULE, "qlink", PIN)
    mp.undo()


def test_issuing_key_in_token_signs_certificates_and_crl(
    token: Pkcs11Config, tmp_path: Path
) -> None:
    ca_dir = tmp_path / "ca"
    ca = CertificateAuthority.load_or_create(ca_dir, hsm=token)
    assert not (ca_dir / "issuing.key").exists()
    assert (ca_dir / "root.key").exists()  # the root stays offline-able on disk
    ca.issuing_cert.verify_directly_issued_by(ca.root_cert)
    d = SimDevice("https://localhost", b"")
    cert = ca.issue_device(x509.load_der_x509_csr(make_csr(d.key, d.device_id)), d.device_id, 7)
    cert.verify_directly_issued_by(ca.issuing_cert)
    assert cert.public_key() == d.key.public_key()
    # The service certificates (server, broker, admin) are signed by the token as well.
    server = x509.load_pem_x509_certificates(ca.cert_path("server").read_bytes())[0]
    server.verify_directly_issued_by(ca.issuing_cert)
    crl = x509.load_der_x509_crl(ca.make_crl([(cert.serial_number, 1.8e9)]))
    key = ca.issuing_cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert crl.is_signature_valid(key)
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    again = CertificateAuthority.load_or_create(ca_dir, hsm=token)
    assert again.issuing_cert == ca.issuing_cert


# SoftHSM's start-up leaves OpenSSL errors on the thread's error queue (it looks for engines
# it does not find), and the DER root loader of Python's `ssl` reads that queue after its last
# certificate. A fresh process each: the token's library starts once a process, and a root that
# loads clears the queue.
_ROOT_AFTER_TOKEN = """
import sys
from pathlib import Path
from cryptography.hazmat.primitives import serialization
from host.server.ca import CertificateAuthority
from host.server.hsm import Pkcs11Config
from host.server.targets import tls_context
from hil.simdevice import root_context
ca = CertificateAuthority.load_or_create(Path(sys.argv[2]), hsm=Pkcs11Config(*sys.argv[3:]))
make = {"target": tls_context, "device": root_context}[sys.argv[1]]
make(ca.root_cert.public_bytes(serialization.Encoding.DER))
print("loaded")
"""


@pytest.mark.parametrize("context", ["target", "device"])
def test_a_tls_root_loads_after_the_token_starts(
    token: Pkcs11Config, tmp_path: Path, context: str
) -> None:
    """The server's context for a target and the rig's device context load a DER root in the
    thread that opened the token."""
    hsm = [token.module, token.token, token.pin]
    run = subprocess.run(
        [sys.executable, "-c", _ROOT_AFTER_TOKEN, context, str(tmp_path / "ca"), *hsm],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["loaded"]


def test_wrong_pin_is_one_sentence(token: Pkcs11Config, tmp_path: Path) -> None:
    bad = Pkcs11Config(token.module, token.token, "9999")
    with pytest.raises(HsmError, match="check the module path, token label and PIN"):
        CertificateAuthority.load_or_create(tmp_path / "ca", hsm=bad)


def test_missing_module_is_one_sentence(tmp_path: Path) -> None:
    cfg = Pkcs11Config(str(tmp_path / "nope.so"), "qlink", PIN)
    with pytest.raises(HsmError, match="cannot open PKCS#11 token"):
        CertificateAuthority.load_or_create(tmp_path / "ca", hsm=cfg)


def test_token_ca_without_token_settings_is_refused(token: Pkcs11Config, tmp_path: Path) -> None:
    """A command run without the token settings must not make a new issuing key on disk."""
    from host.server.ca import CaError

    ca_dir = tmp_path / "ca"
    CertificateAuthority.load_or_create(ca_dir, hsm=token)
    before = sorted(p.name for p in ca_dir.iterdir())
    with pytest.raises(CaError, match="QLINK_PKCS11_PIN"):
        CertificateAuthority.load_or_create(ca_dir)
    with pytest.raises(CaError, match="QLINK_PKCS11_PIN"):
        CertificateAuthority.load(ca_dir)
    assert sorted(p.name for p in ca_dir.iterdir()) == before
    assert "issuing.key" not in before
