"""Writes tests/firmware/certs.py: the certificates and keys the firmware tests of the command
channel and of renewal use, made with pyca/cryptography (the device checks what another
implementation made, never its own output).

    .venv/bin/python tests/firmware/gen_certs.py > tests/firmware/certs.py

Keys are derived from fixed labels, so the keys and the command bodies are the same on every
run; ECDSA signatures (certificates, the host-signed commands) are randomised by cryptography
and change. The times are fixed: the tests set the device clock (agent.clock.use).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# docs/protocol.md "Command channel"
COMMAND_EKU = x509.ObjectIdentifier("2.25.311889229853575044542618327131203868764")
LABEL = b"qlink-cmd-v1\x00"
_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256 order

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)  # the device certificate's notBefore
EXP = 1775000000  # 2026-03-31: the host-signed commands' expiry
DER = serialization.Encoding.DER


def _key(label: str, curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    d = int.from_bytes(hashlib.sha256(label.encode()).digest(), "big") % (_N - 1) + 1
    return ec.derive_private_key(d, curve or ec.SECP256R1())


def _scalar(key: ec.EllipticCurvePrivateKey) -> int:
    return key.private_numbers().private_value


def _point(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(DER.X962, serialization.PublicFormat.UncompressedPoint)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


ROOT_KEY = _key("qlink test root")
OTHER_KEY = _key("qlink test other root")
ROOT = (
    x509.CertificateBuilder()
    .subject_name(_name("qlink test root"))
    .issuer_name(_name("qlink test root"))
    .public_key(ROOT_KEY.public_key())
    .serial_number(1)
    .not_valid_before(T0)
    .not_valid_after(T0 + dt.timedelta(days=3650))
    .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    .add_extension(_usage(True), critical=True)
    .sign(ROOT_KEY, hashes.SHA256())
)


def _leaf(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    eku: list[x509.ObjectIdentifier] | None,
    *,
    signer: ec.EllipticCurvePrivateKey = ROOT_KEY,
    start: dt.datetime = T0,
    days: int = 825,
    digest: hashes.SHA256 | hashes.SHA384 | None = None,
    san: str | None = None,
) -> bytes:
    # The shape host/server/ca.py gives a root-issued leaf: key identifiers, basic
    # constraints and key usage (critical), then the extended key usage.
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ROOT.subject)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(hashlib.sha256(cn.encode()).digest()[:8], "big"))
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(False), critical=True)
    )
    if eku is not None:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if san is not None:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
    return b.sign(signer, digest or hashes.SHA256()).public_bytes(DER)


SIGNER_KEY = _key("qlink test command signer")
DEVICE_KEY = _key("qlink test device")
OTHER_DEVICE_KEY = _key("qlink test other device")
DEVICE_ID = hashlib.sha256(_point(DEVICE_KEY)).hexdigest()
TLS_KEY = _key("qlink test tls server")


def _command(seq: int, kind: str) -> bytes:
    body = json.dumps(
        {"v": 1, "device_id": DEVICE_ID, "seq": seq, "exp": EXP, "kind": kind, "args": {}},
        separators=(",", ":"),
    ).encode()
    r, s = decode_dss_signature(SIGNER_KEY.sign(LABEL + body, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big") + body


VALUES: list[tuple[str, str, bytes | int | str]] = [
    ("ROOT", "the pinned root (P-256, self-signed)", ROOT.public_bytes(DER)),
    (
        "SIGNER",
        "command signer: root-signed, EKU qlink only",
        _leaf("s", SIGNER_KEY, [COMMAND_EKU]),
    ),
    (
        "SIGNER_D",
        "the command signer's private scalar (tests sign on the device)",
        _scalar(SIGNER_KEY),
    ),
    ("SIGNER_PUB", "its public point", _point(SIGNER_KEY)),
    (
        "SIGNER_FOREIGN",
        "the same fields signed by another key",
        _leaf("s", SIGNER_KEY, [COMMAND_EKU], signer=OTHER_KEY),
    ),
    ("SIGNER_NO_EKU", "root-signed, no extended key usage", _leaf("s", SIGNER_KEY, None)),
    (
        "SIGNER_TLS",
        "root-signed, EKU serverAuth only",
        _leaf("s", SIGNER_KEY, [ExtendedKeyUsageOID.SERVER_AUTH]),
    ),
    (
        "SIGNER_EXTRA",
        "root-signed, EKU qlink and serverAuth",
        _leaf("s", SIGNER_KEY, [COMMAND_EKU, ExtendedKeyUsageOID.SERVER_AUTH]),
    ),
    (
        "SIGNER_P384",
        "root-signed, EKU qlink, a P-384 key",
        _leaf("s", _key("qlink test p384", ec.SECP384R1()), [COMMAND_EKU]),
    ),
    (
        "SIGNER_SHA384",
        "root-signed with ecdsa-with-SHA384",
        _leaf("s", SIGNER_KEY, [COMMAND_EKU], digest=hashes.SHA384()),
    ),
    ("DEVICE_PUB", "the device's public point", _point(DEVICE_KEY)),
    ("DEVICE_ID", "SHA-256 of it, hex", DEVICE_ID),
    (
        "DEVICE_CERT",
        "the device's certificate, 2026-01-01 to 2027-01-01",
        _leaf(DEVICE_ID, DEVICE_KEY, [ExtendedKeyUsageOID.CLIENT_AUTH], days=365),
    ),
    (
        "DEVICE_CERT2",
        "its renewal, 2026-09-01 to 2027-09-01",
        _leaf(
            DEVICE_ID,
            DEVICE_KEY,
            [ExtendedKeyUsageOID.CLIENT_AUTH],
            start=dt.datetime(2026, 9, 1, tzinfo=dt.UTC),
            days=365,
        ),
    ),
    (
        "OTHER_CERT",
        "another device's certificate",
        _leaf("other", OTHER_DEVICE_KEY, [ExtendedKeyUsageOID.CLIENT_AUTH], days=365),
    ),
    ("CMD_EXP", "exp of the host-signed commands", EXP),
    ("CMD_PING", "host-signed ping, seq 1", _command(1, "ping")),
    ("CMD_RENEW", "host-signed renew, seq 2", _command(2, "renew")),
    (
        "TLS_CERT",
        "a TLS server leaf for localhost, root-signed",
        _leaf("localhost", TLS_KEY, [ExtendedKeyUsageOID.SERVER_AUTH], days=3000, san="localhost"),
    ),
    (
        "TLS_KEY",
        "its SEC1 private key",
        TLS_KEY.private_bytes(
            DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        ),
    ),
]


def _lines(name: str, what: str, value: bytes | int | str) -> list[str]:
    out = [f"# {what}"]
    if isinstance(value, bytes):
        h = value.hex()
        out.append(f"{name} = unhexlify(")
        out += [f'    "{h[i : i + 88]}"' for i in range(0, len(h), 88)]
        out.append(")")
    elif isinstance(value, int):
        out.append(f"{name} = 0x{value:X}" if value > 1 << 64 else f"{name} = {value}")
    else:
        out.append(f'{name} = "{value}"')
    return out


def main() -> None:
    lines = [
        "# Generated by tests/firmware/gen_certs.py with pyca/cryptography; do not edit.",
        "# Certificates and keys of the command-channel and renewal tests (read by MicroPython).",
        "from binascii import unhexlify",
        "",
    ]
    for name, what, value in VALUES:
        lines += _lines(name, what, value)
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
