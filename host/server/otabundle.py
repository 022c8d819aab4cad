"""The release key and the `.qota` bundle (docs/ota.md "Release"): `qlink ota build` makes the
tree (the project's firmware, or a given directory), signs its manifest and writes the tar;
`verify_bundle` checks a bundle against everything a device will check: the signer certificate
from the pinned root for firmware signing alone, the signature, the manifest's rules, and every
file's size and SHA-256.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import re
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from host import firmware
from host.server.otamanifest import (
    MAX_TOTAL,
    Manifest,
    ReleaseError,
    check_board,
    check_path,
    manifest_bytes,
    parse_manifest,
    parse_version,
)

if TYPE_CHECKING:
    from host.server.ca import CertificateAuthority
    from host.server.hsm import Pkcs11Config, Pkcs11Key

# "qlink firmware signing": a UUID-based OID (ITU-T X.667, arc 2.25), as the command signer's.
RELEASE_EKU = x509.ObjectIdentifier("2.25.230702443920874563719838064095364702917")
SIGN_LABEL = b"qlink-ota-v1\x00"  # domain separation of the manifest signature
KEY_LABEL = "qlink-release"  # the release key's label in a PKCS#11 token
_SUBJECT = "qlink release signer"
_MAX_SIGNER = 4096  # bytes of signer.der
_MAX_BUNDLE = MAX_TOTAL + 256 * 1024  # the files, the manifest, the certificate, tar headers


class BadSignature(ReleaseError):
    code = "bad_signature"


# -- the release key ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ReleaseSigner:
    """The release key (`ca/release.key`, or `qlink-release` in a PKCS#11 token) and its
    certificate from the root, for RELEASE_EKU alone (`ca/release.pem`)."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | Pkcs11Key

    @property
    def cert_der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    def sign(self, manifest: bytes) -> bytes:
        """64 bytes r || s over SHA-256(SIGN_LABEL || manifest)."""
        from host.server.purposekey import raw_signature

        return raw_signature(self.key, SIGN_LABEL + manifest)

    @classmethod
    def load_or_create(
        cls, ca: CertificateAuthority, hsm: Pkcs11Config | None = None
    ) -> ReleaseSigner:
        from host.server.purposekey import file_key, token_key

        if hsm is not None:
            return cls(*token_key(ca, "release", _SUBJECT, RELEASE_EKU, hsm, KEY_LABEL))
        return cls(*file_key(ca, "release", _SUBJECT, RELEASE_EKU))


def signature_holds(cert: x509.Certificate, manifest: bytes, signature: bytes) -> bool:
    key = cert.public_key()
    if len(signature) != 64 or not isinstance(key, ec.EllipticCurvePublicKey):
        return False
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), SIGN_LABEL + manifest, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def check_signer(signer_der: bytes, root: x509.Certificate) -> x509.Certificate:
    """The signer's certificate, if the root issued it for firmware signing alone and it is
    valid now; BadSignature otherwise."""
    try:
        cert = x509.load_der_x509_certificate(signer_der)
    except ValueError:
        raise BadSignature("signer.der is not an X.509 certificate") from None
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        raise BadSignature(
            "the release's signer certificate is not issued by this server's root CA; build "
            "it with this server's data directory (qlink ota build --data-dir ...)"
        ) from None
    try:
        eku = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        eku = []
    if eku != [RELEASE_EKU]:
        raise BadSignature(
            "the release's signer certificate is not for firmware signing alone "
            f"(extended key usage {RELEASE_EKU.dotted_string} and no other)"
        )
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise BadSignature("the release's signer key must be EC P-256")
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise BadSignature(
            "the release's signer certificate is not valid now "
            f"({cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}); "
            "build the release again"
        )
    return cert


# -- building ----------------------------------------------------------------------------------
def build_tree(board: str, version: str, out: Path) -> dict[str, Path]:
    """The project's firmware for `board` in `out` (device path -> local file): the packages
    compiled to .mpy for the board, main.py and the board's HAL, with agent/version.py saying
    `version`. Not boot.py or enrol.py: they are never updated over the air."""
    parse_version(version)
    check_board(board)
    try:
        files = firmware.build(board, out)
        with tempfile.TemporaryDirectory(prefix="qlink-ota-version-") as tmp:
            src = Path(tmp) / "version.py"
            src.write_text(
                '# Firmware version reported in telemetry ("fw") and compared by OTA.\n'
                f'VERSION = "{version}"\n'
            )
            dst = out / "agent" / "version.mpy"
            firmware.compile_mpy(src, "agent/version.py", dst, firmware.board_arch(board))
    except firmware.BuildError as e:  # UnixPortMissing among them
        raise ReleaseError(str(e)) from None
    for name in ("boot.py", "enrol.py"):
        files.pop(name, None)
        (out / name).unlink(missing_ok=True)
    return files


def tree_files(tree: Path, version: str) -> dict[str, Path]:
    """Every regular file under `tree` (device path -> local file), checked to say `version`
    in agent/version.py (or its compiled agent/version.mpy)."""
    if not tree.is_dir():
        raise ReleaseError(f"{tree} is not a directory; give a firmware tree or - (the project's)")
    files: dict[str, Path] = {}
    for p in sorted(tree.rglob("*")):
        rel = p.relative_to(tree).as_posix()
        if p.is_symlink():
            raise ReleaseError(f"{rel} in {tree} is a symbolic link; a release holds files only")
        if p.is_file():
            files[rel] = p
    if not files:
        raise ReleaseError(f"{tree} holds no files")
    if "agent/version.py" in files:
        said = re.search(r'^VERSION\s*=\s*"([^"]*)"', files["agent/version.py"].read_text(), re.M)
        if said is None or said[1] != version:
            raise ReleaseError(
                f'agent/version.py in {tree} must say VERSION = "{version}" '
                f"(it says {said[1] if said else 'no VERSION'!r})"
            )
    elif "agent/version.mpy" in files:
        # A compiled module keeps its string constants as they are: the version is in it.
        if version.encode() not in files["agent/version.mpy"].read_bytes():
            raise ReleaseError(f"agent/version.mpy in {tree} does not hold version {version}")
    else:
        raise ReleaseError(
            f"{tree} has no agent/version.py (or .mpy): the agent reports its version from it"
        )
    return files


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0  # the same release builds the same bundle
    return info, io.BytesIO(data)


def bundle_bytes(manifest: bytes, signature: bytes, signer_der: bytes, files: list[bytes]) -> bytes:
    """The `.qota` tar: manifest.json, manifest.sig, signer.der, files/<path> in manifest order."""
    entries = parse_manifest(manifest).files
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in (
            ("manifest.json", manifest),
            ("manifest.sig", signature),
            ("signer.der", signer_der),
            *((f"files/{e.path}", d) for e, d in zip(entries, files, strict=True)),
        ):
            tar.addfile(*_member(name, data))
    return buf.getvalue()


def build_release(
    tree_dir: Path | None,
    version: str,
    board: str,
    min_version: str,
    signer: ReleaseSigner,
    out_file: Path,
) -> Path:
    """Build, sign and write the release bundle; `tree_dir` None is the project's firmware."""
    from host.server.files import atomic_write

    parse_version(version)
    parse_version(min_version)
    check_board(board)
    with tempfile.TemporaryDirectory(prefix="qlink-ota-") as tmp:
        if tree_dir is None:
            files = build_tree(board, version, Path(tmp) / "tree")
        else:
            files = tree_files(tree_dir, version)
        contents = {path: p.read_bytes() for path, p in files.items()}
    manifest = manifest_bytes(version, min_version, board, contents)
    ordered = [contents[path] for path in sorted(contents)]
    data = bundle_bytes(manifest, signer.sign(manifest), signer.cert_der, ordered)
    atomic_write(out_file, data)
    return out_file


# -- checking a bundle -------------------------------------------------------------------------
@dataclass(frozen=True)
class Bundle:
    manifest: Manifest
    manifest_bytes: bytes
    signature: bytes
    signer_der: bytes
    files: dict[str, bytes]  # in manifest order

    @property
    def release_id(self) -> str:
        return self.manifest.release_id


def _read_members(raw: bytes) -> dict[str, bytes]:
    try:
        tar = tarfile.open(fileobj=io.BytesIO(raw), mode="r:")
        members = tar.getmembers()
    except (tarfile.TarError, EOFError):
        raise ReleaseError("the bundle is not a release (.qota: a tar file)") from None
    out: dict[str, bytes] = {}
    with tar:
        for m in members:
            if not m.isreg():
                raise ReleaseError(f"the bundle's member {m.name[:100]!r} is not a regular file")
            if m.name in out:
                raise ReleaseError(f"the bundle holds {m.name[:100]!r} twice")
            f = tar.extractfile(m)
            assert f is not None  # a regular file
            out[m.name] = f.read()
    return out


def verify_bundle(source: Path | bytes, root_cert: x509.Certificate) -> Bundle:
    """The bundle, once everything a device checks holds: the signer's certificate from
    `root_cert` for firmware signing alone, the manifest's signature, its rules, and each
    file's size and SHA-256. ReleaseError (BadSignature) with the rule otherwise."""
    if isinstance(source, Path):
        try:
            if source.stat().st_size > _MAX_BUNDLE:
                raise ReleaseError(
                    f"{source} is larger than a release can be ({_MAX_BUNDLE} bytes)"
                )
            raw = source.read_bytes()
        except OSError as e:
            raise ReleaseError(f"cannot read {source}: {e.strerror}; check the path") from None
    else:
        raw = bytes(source)
    if len(raw) > _MAX_BUNDLE:
        raise ReleaseError(f"the bundle is larger than a release can be ({_MAX_BUNDLE} bytes)")
    members = _read_members(raw)
    for name in ("manifest.json", "manifest.sig", "signer.der"):
        if name not in members:
            raise ReleaseError(f"the bundle has no {name}; build it with: qlink ota build")
    unknown = sorted(
        n
        for n in members
        if n not in ("manifest.json", "manifest.sig", "signer.der") and not n.startswith("files/")
    )
    if unknown:
        raise ReleaseError(f"the bundle holds {unknown[0][:100]!r}, which no release has")
    manifest, signature, signer_der = (
        members["manifest.json"],
        members["manifest.sig"],
        members["signer.der"],
    )
    if len(signer_der) > _MAX_SIGNER:
        raise BadSignature("signer.der is too long to be the release key's certificate")
    cert = check_signer(signer_der, root_cert)
    if not signature_holds(cert, manifest, signature):
        raise BadSignature(
            "the manifest's signature does not verify with the signer's key (altered after "
            "it was signed?); build the release again"
        )
    parsed = parse_manifest(manifest)
    given = {n.removeprefix("files/"): d for n, d in members.items() if n.startswith("files/")}
    named = {e.path for e in parsed.files}
    for path in sorted(given):
        if path not in named:
            why = check_path(path)
            raise ReleaseError(
                why or f"the bundle holds files/{path}, which its manifest does not name"
            )
    files: dict[str, bytes] = {}
    for entry in parsed.files:
        path = entry.path
        data = given.get(path)
        if data is None:
            raise ReleaseError(f"the bundle lacks files/{path}, which its manifest names")
        if len(data) != entry.size:
            raise ReleaseError(f"files/{path} is {len(data)} bytes; the manifest says {entry.size}")
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise ReleaseError(f"files/{path} does not match its SHA-256 in the manifest")
        files[path] = data
    return Bundle(parsed, manifest, signature, signer_der, files)
