"""Firmware releases, server side (host/server/releases.py, store/releases.py, host/otacli.py):
the bundle `qlink ota build` writes, everything `publish` checks before it keeps anything, the
payload's encryption and the content key's wrap per device, and the device's OTA key in its
proof (docs/ota.md)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from apiutil import operator_api
from cliutil import run_qlink
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from hil import unixport
from hil.simdevice import ApiResponse, SimDevice
from host.server import releases as R
from host.server.application import Application
from host.server.onboarding import OnboardingRefused, proof_message
from host.server.policy import MemoryPolicy
from host.server.schemas import DeviceRecord
from host.server.settings import Settings
from host.server.store import Actor

ALICE = Actor("cli:alice", "local")
DEVICE_A = "a1" * 32
DEVICE_B = "b2" * 32


# -- helpers -----------------------------------------------------------------------------------
def _point(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def _files(version: str = "0.2.0") -> dict[str, bytes]:
    return {
        "main.py": b"import agent.main\n",
        "agent/version.py": f'VERSION = "{version}"\n'.encode(),
        "qdid/p256.mpy": bytes(range(256)) * 3,
    }


def _manifest(files: dict[str, bytes], **over: Any) -> bytes:
    """A manifest written by hand (so it may break the rules manifest_bytes enforces)."""
    doc: dict[str, Any] = {"v": 1, "version": "0.2.0", "min_version": "0.1.0", "board": "unix"}
    doc.update({k: v for k, v in over.items() if k != "entries"})
    doc["files"] = over.get("entries") or [
        {"path": p, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
        for p, d in sorted(files.items())
    ]
    return json.dumps(doc, separators=(",", ":")).encode()


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _bundle(
    signer: R.ReleaseSigner,
    files: dict[str, bytes] | None = None,
    *,
    manifest: bytes | None = None,
    signature: bytes | None = None,
    content: dict[str, bytes] | None = None,
) -> bytes:
    """A bundle signed by `signer`; each keyword replaces one honest part."""
    files = _files() if files is None else files
    manifest = _manifest(files) if manifest is None else manifest
    sig = signer.sign(manifest) if signature is None else signature
    content = files if content is None else content
    members = [("manifest.json", manifest), ("manifest.sig", sig), ("signer.der", signer.cert_der)]
    members += [(f"files/{p}", d) for p, d in sorted(content.items())]
    return _tar(members)


class Rig:
    def __init__(self, app: Application, data_dir: Path) -> None:
        self.app, self.data_dir = app, data_dir
        self.signer = R.ReleaseSigner.load_or_create(app.ca)

    @property
    def kept(self) -> list[str]:
        """Every name under releases/ (temporary ones too) but the publish lock."""
        d = self.data_dir / "releases"
        names = (p.name for p in d.iterdir()) if d.exists() else ()
        return sorted(n for n in names if n != ".publish.lock")

    def publish(self, bundle: bytes) -> Any:
        return self.app.releases.publish(bundle, ALICE)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    app = Application.for_operator(Settings(data_dir=tmp_path))
    yield Rig(app, tmp_path)
    app.close()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Application, Path]]:
    """The project's own firmware for board unix, built once, as version 0.2.0."""
    data = tmp_path_factory.mktemp("data")
    app = Application.for_operator(Settings(data_dir=data))
    signer = R.ReleaseSigner.load_or_create(app.ca)
    out = R.build_release(None, "0.2.0", "unix", "0.1.0", signer, data / "unix.qota")
    yield app, out
    app.close()


# -- the bundle of the project's firmware ------------------------------------------------------
def test_the_project_firmware_builds_for_unix_with_its_version_and_without_boot_or_enrol(
    project: tuple[Application, Path], tmp_path: Path
) -> None:
    app, out = project
    bundle = R.verify_bundle(out, app.ca.root_cert)
    paths = list(bundle.files)
    assert {"main.py", "board.py", "silicon.py", "agent/main.mpy", "qdid/p256.mpy"} <= set(paths)
    assert "boot.py" not in paths and "enrol.py" not in paths
    assert not any(p.endswith(".py") and "/" in p for p in paths)  # packages ship compiled
    assert bundle.files["main.py"] == (unixport.FIRMWARE / "main.py").read_bytes()
    # The compiled agent/version.mpy says the release's version on the Unix port itself.
    tree = tmp_path / "tree"
    for path, data in bundle.files.items():
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_bytes(data)
    proc = subprocess.run(
        [unixport.micropython(), "-c", "from agent.version import VERSION; print(VERSION)"],
        env={**os.environ, "MICROPYPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.stdout.strip() == "0.2.0", proc.stderr
    # The checkout's own agent/version.py is left as it was.
    assert "0.2.0" not in (unixport.FIRMWARE / "agent" / "version.py").read_text()


def test_the_bundle_is_a_tar_in_the_documented_order_with_a_compact_sorted_manifest(
    project: tuple[Application, Path],
) -> None:
    _, out = project
    with tarfile.open(out) as tar:
        names = tar.getnames()
        manifest = tar.extractfile("manifest.json").read()  # type: ignore[union-attr]
    doc = json.loads(manifest)
    assert names[:3] == ["manifest.json", "manifest.sig", "signer.der"]
    assert names[3:] == [f"files/{f['path']}" for f in doc["files"]]
    assert list(doc) == ["v", "version", "min_version", "board", "files"]
    assert (doc["v"], doc["version"], doc["min_version"], doc["board"]) == (
        1,
        "0.2.0",
        "0.1.0",
        "unix",
    )
    paths = [f["path"] for f in doc["files"]]
    assert paths == sorted(paths)
    assert all(list(f) == ["path", "size", "sha256"] for f in doc["files"])
    assert b" " not in manifest and manifest == json.dumps(doc, separators=(",", ":")).encode()


def test_the_signature_verifies_and_the_signer_chains_to_the_root_for_firmware_signing_only(
    project: tuple[Application, Path],
) -> None:
    app, out = project
    with tarfile.open(out) as tar:
        manifest, sig, signer_der = (
            tar.extractfile(n).read()  # type: ignore[union-attr]
            for n in ("manifest.json", "manifest.sig", "signer.der")
        )
    cert = x509.load_der_x509_certificate(signer_der)
    cert.verify_directly_issued_by(app.ca.root_cert)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert [o.dotted_string for o in eku] == ["2.25.230702443920874563719838064095364702917"]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and len(sig) == 64
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    key.verify(der, b"qlink-ota-v1\x00" + manifest, ec.ECDSA(hashes.SHA256()))
    ca_dir = app.settings.ca_dir
    assert stat.S_IMODE((ca_dir / "release.key").stat().st_mode) == 0o600
    assert R.ReleaseSigner.load_or_create(app.ca).cert_der == signer_der  # loaded, not made


def test_the_release_key_certificate_is_renewed_over_the_same_key(rig: Rig) -> None:
    first = rig.signer
    (rig.app.settings.ca_dir / "release.pem").write_bytes(b"")  # lost, or near its end
    second = R.ReleaseSigner.load_or_create(rig.app.ca)
    assert second.cert_der != first.cert_der
    assert second.cert.public_key() == first.cert.public_key()


def test_a_given_tree_is_taken_as_it_is_and_must_say_the_version(rig: Rig, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    for path, data in _files("0.3.0").items():
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_bytes(data)
    out = R.build_release(tree, "0.3.0", "unix", "0.0.0", rig.signer, tmp_path / "r.qota")
    assert R.verify_bundle(out, rig.app.ca.root_cert).files == dict(sorted(_files("0.3.0").items()))
    with pytest.raises(R.ReleaseError, match=re.escape('must say VERSION = "0.4.0"')):
        R.build_release(tree, "0.4.0", "unix", "0.0.0", rig.signer, tmp_path / "s.qota")
    assert not (tmp_path / "s.qota").exists()


# -- the rules ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("agent/main.mpy", None),
        ("lib/boot.py", None),
        ("a" * 48, None),
        ("/".join(["a" * 47] * 2), None),  # 95 characters
        ("a/" * 47 + "bc", None),  # 96 characters
        ("a/" * 47 + "bcd", "longer than 96"),
        ("a" * 49, "each part must be 1 to 48"),
        ("../x", "not '.' or '..'"),
        ("a/./b", "not '.' or '..'"),
        ("a//b", "each part"),
        ("/main.py", "must be relative"),
        ("a b.py", "each part"),
        ("", "non-empty"),
        ("boot.py", "fixed loader"),
        ("enrol.py", "never updated"),
        ("config.json", "never updated"),
        ("data/fw_min", "nothing under data/"),
        ("ota/state.json", "nothing under ota/"),
        ("root.der", ".der"),
        ("certs/ca.der", ".der"),
    ],
)
def test_the_path_rules_on_both_sides(path: str, why: str | None) -> None:
    got = R.check_path(path)
    if why is None:
        assert got is None
    else:
        assert got is not None and why in got


@pytest.mark.parametrize("good", ["0.0.0", "0.2.0", "65535.65535.65535", "10.0.1"])
def test_a_version_is_three_decimals_up_to_65535(good: str) -> None:
    assert R.parse_version(good) == tuple(int(x) for x in good.split("."))


@pytest.mark.parametrize("bad", ["65536.0.0", "1.0", "1.0.0.0", "01.0.0", "v1.0.0", "1.0.-1", ""])
def test_a_version_outside_the_rule_is_refused(bad: str) -> None:
    with pytest.raises(R.ReleaseError, match=r"MAJOR\.MINOR\.PATCH"):
        R.parse_version(bad)


def test_the_manifest_is_compact_ordered_and_sorted_by_path() -> None:
    files = {"b.py": b"b", "a/z.mpy": b"zz", "a/a.mpy": Path(__file__)}
    m = R.manifest_bytes("1.2.3", "1.0.0", "unix", files)  # type: ignore[arg-type]
    sha = {
        k: hashlib.sha256(v if isinstance(v, bytes) else v.read_bytes()).hexdigest()
        for k, v in files.items()
    }
    size = Path(__file__).stat().st_size
    assert (
        m
        == (
            '{"v":1,"version":"1.2.3","min_version":"1.0.0","board":"unix","files":['
            f'{{"path":"a/a.mpy","size":{size},"sha256":"{sha["a/a.mpy"]}"}},'
            f'{{"path":"a/z.mpy","size":2,"sha256":"{sha["a/z.mpy"]}"}},'
            f'{{"path":"b.py","size":1,"sha256":"{sha["b.py"]}"}}]}}'
        ).encode()
    )
    assert R.parse_manifest(m).files[0].path == "a/a.mpy"


def test_a_release_holds_at_most_64_files_and_1_mib() -> None:
    R.manifest_bytes("1.0.0", "0.0.0", "unix", {f"f{i}": b"" for i in range(64)})
    with pytest.raises(R.ReleaseError, match="at most 64 files, not 65"):
        R.manifest_bytes("1.0.0", "0.0.0", "unix", {f"f{i}": b"" for i in range(65)})
    R.manifest_bytes("1.0.0", "0.0.0", "unix", {"a": b"x" * (1 << 20)})
    with pytest.raises(R.ReleaseError, match="at most 1048576 bytes in all, not 1048577"):
        R.manifest_bytes("1.0.0", "0.0.0", "unix", {"a": b"x" * (1 << 20), "b": b"x"})
    with pytest.raises(R.ReleaseError, match=r"min_version 1\.0\.1 is above"):
        R.manifest_bytes("1.0.0", "1.0.1", "unix", {"a": b""})


# -- publishing --------------------------------------------------------------------------------
def test_publish_keeps_the_files_and_the_key_0600_and_records_the_release(rig: Rig) -> None:
    files = _files()
    out = rig.publish(_bundle(rig.signer, files))
    assert (out.id, out.version, out.min_version, out.board) == (
        "unix-0.2.0",
        "0.2.0",
        "0.1.0",
        "unix",
    )
    assert (out.files, out.size, out.bytes_served) == (3, sum(map(len, files.values())), 0)
    assert rig.kept == ["unix-0.2.0"]
    d = rig.data_dir / "releases" / "unix-0.2.0"
    assert sorted(p.name for p in d.iterdir()) == [
        "content.key",
        "manifest.json",
        "manifest.sig",
        "payload.bin",
        "signer.der",
    ]
    assert stat.S_IMODE((d / "content.key").stat().st_mode) == 0o600
    assert (d / "manifest.json").read_bytes() == _manifest(files)
    assert out.manifest_sha256 == hashlib.sha256(_manifest(files)).hexdigest()
    payload = (d / "payload.bin").read_bytes()
    assert out.payload_size == len(payload) == 16 + (out.size // 16 + 1) * 16 + 32
    plain = R.decrypt_payload(out.id, (d / "content.key").read_bytes(), payload)
    assert plain == b"".join(data for _, data in sorted(files.items()))
    assert rig.app.releases.releases() == [out]
    assert rig.app.releases.payload_path(out.id) == d / "payload.bin"
    rig.app.releases.add_bytes_served(out.id, 1000)
    rig.app.releases.add_bytes_served(out.id, 24)
    assert rig.app.releases.release(out.id).bytes_served == 1024
    (event,) = rig.app.audit(action="release.publish")
    assert (event.actor, event.target) == ("cli:alice", "release:unix-0.2.0")


def _other_root_signer(tmp_path: Path) -> R.ReleaseSigner:
    other = Application.for_operator(Settings(data_dir=tmp_path / "elsewhere"))
    try:
        return R.ReleaseSigner.load_or_create(other.ca)
    finally:
        other.close()


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


Refusal = Callable[[Rig, Path], bytes]
_REFUSALS: dict[str, tuple[Refusal, type[R.ReleaseError], str]] = {
    "tampered_manifest": (
        lambda r, _: _bundle(
            r.signer,
            manifest=_manifest(_files()).replace(
                b'"min_version":"0.1.0"', b'"min_version":"0.0.0"'
            ),
            signature=r.signer.sign(_manifest(_files())),
        ),
        R.BadSignature,
        "signature does not verify",
    ),
    "bad_signature": (
        lambda r, _: _bundle(r.signer, signature=_flip(r.signer.sign(_manifest(_files())), 40)),
        R.BadSignature,
        "signature does not verify",
    ),
    "short_signature": (
        lambda r, _: _bundle(r.signer, signature=b"\x01" * 63),
        R.BadSignature,
        "signature does not verify",
    ),
    "signer_of_another_root": (
        lambda r, tmp: _bundle(_other_root_signer(tmp)),
        R.BadSignature,
        "not issued by this server's root CA",
    ),
    "path_dotdot": (
        lambda r, _: _bundle(r.signer, {**_files(), "../x": b"x"}),
        R.ReleaseError,
        "not '.' or '..'",
    ),
    "path_boot_py": (
        lambda r, _: _bundle(r.signer, {**_files(), "boot.py": b"x"}),
        R.ReleaseError,
        "boot.py is the device's fixed loader",
    ),
    "path_der": (
        lambda r, _: _bundle(r.signer, {**_files(), "root.der": b"x"}),
        R.ReleaseError,
        "pinned root",
    ),
    "size_mismatch": (
        lambda r, _: _bundle(r.signer, content={**_files(), "main.py": b"import agent.main\n#"}),
        R.ReleaseError,
        "files/main.py is 19 bytes; the manifest says 18",
    ),
    "hash_mismatch": (
        lambda r, _: _bundle(r.signer, content={**_files(), "main.py": b"import agent.mainX"}),
        R.ReleaseError,
        "files/main.py does not match its SHA-256",
    ),
    "file_missing": (
        lambda r, _: _bundle(r.signer, content={"main.py": _files()["main.py"]}),
        R.ReleaseError,
        "lacks files/agent/version.py",
    ),
    "file_unnamed": (
        lambda r, _: _bundle(r.signer, content={**_files(), "extra.py": b""}),
        R.ReleaseError,
        "files/extra.py, which its manifest does not name",
    ),
    "manifest_not_compact": (
        lambda r, _: _bundle(r.signer, manifest=_manifest(_files()).replace(b",", b", ", 1)),
        R.ReleaseError,
        "not in its compact form",
    ),
    "not_a_tar": (lambda r, _: b"hello" * 200, R.ReleaseError, "not a release"),
}


@pytest.mark.parametrize("case", sorted(_REFUSALS))
def test_a_bundle_that_breaks_a_rule_is_refused_and_nothing_is_kept(
    rig: Rig, tmp_path: Path, case: str
) -> None:
    make, kind, says = _REFUSALS[case]
    bundle = make(rig, tmp_path)
    with pytest.raises(kind, match=says):
        rig.publish(bundle)
    assert rig.kept == []
    assert rig.app.releases.releases() == []
    assert rig.app.audit(action="release.publish") == []


def test_the_same_release_twice_is_release_exists_and_the_first_stays(rig: Rig) -> None:
    first = rig.publish(_bundle(rig.signer))
    kept = {p.name: p.read_bytes() for p in (rig.data_dir / "releases" / first.id).iterdir()}
    other = {**_files(), "main.py": b"print('other')\n"}
    with pytest.raises(R.ReleaseExists, match="published already") as e:
        rig.publish(_bundle(rig.signer, other))
    assert e.value.code == "release_exists"
    assert rig.kept == [first.id]
    assert {
        p.name: p.read_bytes() for p in (rig.data_dir / "releases" / first.id).iterdir()
    } == kept
    assert rig.app.releases.releases() == [first]


def test_a_failed_record_leaves_no_files(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_a: Any, **_k: Any) -> None:
        raise R.ReleaseError("the database went away")

    monkeypatch.setattr(rig.app.store.releases, "insert", broken)
    with pytest.raises(R.ReleaseError, match="went away"):
        rig.publish(_bundle(rig.signer))
    assert rig.kept == []


def test_a_directory_left_by_a_publish_that_died_before_its_row_is_replaced(rig: Rig) -> None:
    left = rig.data_dir / "releases" / "unix-0.2.0"
    left.mkdir(parents=True)
    (left / "payload.bin").write_bytes(b"half")
    out = rig.publish(_bundle(rig.signer))
    assert rig.kept == [out.id]
    assert (left / "payload.bin").stat().st_size == out.payload_size


# -- the payload and the wrap ------------------------------------------------------------------
def test_the_payload_follows_the_documented_construction() -> None:
    ck, iv = bytes(range(32)), bytes(range(16, 32))
    _, payload = R.encrypt_payload("unix-0.2.0", [b"abc", b"de"], ck=ck, iv=iv)
    from cryptography.hazmat.primitives import hmac as chmac
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    keys = HKDF(hashes.SHA256(), 64, b"", b"qlink-ota-content-v1").derive(ck)
    enc = Cipher(algorithms.AES(keys[:32]), modes.CBC(iv)).encryptor()
    ct = enc.update(b"abcde" + bytes([11]) * 11) + enc.finalize()
    mac = chmac.HMAC(keys[32:], hashes.SHA256())
    mac.update(b"qlink-ota-payload-v1\x00unix-0.2.0\x00" + iv + ct)
    assert payload == iv + ct + mac.finalize()


@pytest.mark.parametrize("at", [0, 20, -1])  # IV, ciphertext, tag
def test_a_flipped_payload_byte_fails_the_tag(at: int) -> None:
    ck, payload = R.encrypt_payload("unix-0.2.0", [b"x" * 100])
    assert R.decrypt_payload("unix-0.2.0", ck, payload) == b"x" * 100
    with pytest.raises(R.PayloadAltered, match="tag does not hold"):
        R.decrypt_payload("unix-0.2.0", ck, _flip(payload, at % len(payload)))
    with pytest.raises(R.PayloadAltered, match="tag does not hold"):
        R.decrypt_payload("unix-0.3.0", ck, payload)  # another release's


def test_a_wrap_round_trips_for_its_device_only() -> None:
    a, b = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ck = os.urandom(32)
    wrap = R.wrap_key("unix-0.2.0", DEVICE_A, _point(a), ck)
    assert set(wrap) == {"epk", "key", "tag"}
    assert (len(wrap["epk"]), len(wrap["key"]), len(wrap["tag"])) == (130, 64, 64)
    assert R.unwrap_key("unix-0.2.0", DEVICE_A, a, wrap) == ck
    with pytest.raises(R.WrongDevice, match="tag does not hold"):
        R.unwrap_key("unix-0.2.0", DEVICE_B, b, wrap)  # device B's key
    with pytest.raises(R.WrongDevice, match="tag does not hold"):
        R.unwrap_key("unix-0.2.0", DEVICE_B, a, wrap)  # A's key, B's ID
    with pytest.raises(R.WrongDevice, match="tag does not hold"):
        R.unwrap_key("unix-0.3.0", DEVICE_A, a, wrap)  # another release
    # A fresh ephemeral key each time: two wraps of one key for one device differ.
    assert R.wrap_key("unix-0.2.0", DEVICE_A, _point(a), ck)["epk"] != wrap["epk"]


def test_the_wrap_follows_the_documented_construction() -> None:
    device = ec.derive_private_key(7, ec.SECP256R1())
    e = ec.derive_private_key(11, ec.SECP256R1())
    ck = bytes(range(32))
    wrap = R.wrap_key("unix-0.2.0", DEVICE_A, _point(device), ck, ephemeral=e)
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    z = e.exchange(ec.ECDH(), device.public_key())
    salt = hashlib.sha256(b"unix-0.2.0").digest()
    kek = HKDF(hashes.SHA256(), 64, salt, b"qlink-ota-wrap-v1\x00" + DEVICE_A.encode()).derive(z)
    key = bytes(x ^ y for x, y in zip(ck, kek[:32], strict=True))
    import hmac

    tag = hmac.new(kek[32:], _point(e) + key, hashlib.sha256).hexdigest()
    assert wrap == {"epk": _point(e).hex(), "key": key.hex(), "tag": tag}


def test_head_answers_the_documented_document_for_a_device_with_an_ota_key(rig: Rig) -> None:
    rel = rig.publish(_bundle(rig.signer))
    k = ec.generate_private_key(ec.SECP256R1())
    dev = DeviceRecord.model_construct(device_id=DEVICE_A, ota_key=_point(k))
    head = rig.app.releases.head(rel.id, dev)
    assert list(head) == ["release", "manifest", "signature", "signer_b64", "payload_size", "wrap"]
    assert head["manifest"].encode() == _manifest(_files())
    assert (
        bytes.fromhex(head["signature"])
        == (rig.data_dir / "releases" / rel.id / "manifest.sig").read_bytes()
    )
    assert base64.b64decode(head["signer_b64"]) == rig.signer.cert_der
    assert head["payload_size"] == rel.payload_size
    ck = R.unwrap_key(rel.id, DEVICE_A, k, head["wrap"])
    payload = rig.app.releases.payload_path(rel.id).read_bytes()
    assert R.decrypt_payload(rel.id, ck, payload) == b"".join(
        d for _, d in sorted(_files().items())
    )
    without = DeviceRecord.model_construct(device_id=DEVICE_B, ota_key=None)
    with pytest.raises(R.NoOtaKey, match="has sent no OTA key") as e:
        rig.app.releases.head(rel.id, without)
    assert (e.value.status, e.value.code) == (409, "no_ota_key")
    with pytest.raises(R.UnknownRelease, match="does not exist; see: qlink ota list") as u:
        rig.app.releases.head("unix-9.9.9", dev)
    assert (u.value.status, u.value.code) == (404, "unknown_release")
    with pytest.raises(R.UnknownRelease):
        rig.app.releases.payload_path("../etc")


# -- the device's OTA key in its proof ---------------------------------------------------------
class Onboard:
    def __init__(self, app: Application, device: SimDevice) -> None:
        self.app, self.device = app, device
        self.ota = ec.generate_private_key(ec.SECP256R1())

    def proof(self, *, ota_key: str | None, signed_key: bytes | None) -> dict[str, Any]:
        d, ob = self.device, self.app.onboarding
        h = ob.hello({"device_id": d.device_id, "public_key": d.public_key.hex()})
        body = d.proof_body(ApiResponse(200, h))
        msg = proof_message(bytes.fromhex(h["challenge"]), d.device_id, "localhost", signed_key)
        r, s = decode_dss_signature(d.key.sign(msg, ec.ECDSA(hashes.SHA256())))
        body["signature"] = (r.to_bytes(32, "big") + s.to_bytes(32, "big")).hex()
        if ota_key is not None:
            body["ota_key"] = ota_key
        return ob.proof(body)[1]

    def stored(self) -> bytes | None:
        dev = self.app.device(self.device.device_id)
        assert dev is not None
        return dev.ota_key


@pytest.fixture
def onboard(tmp_path: Path) -> Iterator[Onboard]:
    app = Application.for_server(Settings(data_dir=tmp_path), broker_port=1, policy=MemoryPolicy())
    app.create_batch("b")
    d = SimDevice("https://localhost", app.ca.root_der())
    app.import_devices("b", [d.csv_line()])
    yield Onboard(app, d)
    app.close()


def test_a_proof_with_an_ota_key_stores_it_with_the_device(onboard: Onboard) -> None:
    point = _point(onboard.ota)
    answer = onboard.proof(ota_key=point.hex(), signed_key=point)
    assert answer["device_id"] == onboard.device.device_id
    assert onboard.stored() == point
    # A later proof without one (older firmware) keeps it; one with another key replaces it.
    onboard.proof(ota_key=None, signed_key=None)
    assert onboard.stored() == point
    other = _point(ec.generate_private_key(ec.SECP256R1()))
    onboard.proof(ota_key=other.hex().upper(), signed_key=other)
    assert onboard.stored() == other


def test_a_proof_without_an_ota_key_stores_none(onboard: Onboard) -> None:
    onboard.proof(ota_key=None, signed_key=None)
    assert onboard.stored() is None
    dev = onboard.app.device(onboard.device.device_id)
    assert dev is not None and dev.state == "onboarded"


def test_an_ota_key_the_signature_does_not_cover_is_bad_signature(onboard: Onboard) -> None:
    point = _point(onboard.ota)
    with pytest.raises(OnboardingRefused) as e:
        onboard.proof(ota_key=point.hex(), signed_key=None)
    assert (e.value.status, e.value.code) == (403, "bad_signature")
    assert "the OTA key" in e.value.detail
    other = _point(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(OnboardingRefused) as e:
        onboard.proof(ota_key=point.hex(), signed_key=other)  # signed another key
    assert e.value.code == "bad_signature"
    dev = onboard.app.device(onboard.device.device_id)
    assert dev is not None and dev.ota_key is None and dev.state == "registered"


@pytest.mark.parametrize(
    "bad",
    [
        "04" + "00" * 64,  # not on the curve
        "02" + "11" * 64,  # not the uncompressed form
        "04" + "ab" * 63,  # too short
        "04" + "zz" * 64,  # not hex
    ],
)
def test_an_ota_key_that_is_not_a_p256_point_is_bad_request(onboard: Onboard, bad: str) -> None:
    with pytest.raises(OnboardingRefused) as e:
        onboard.proof(ota_key=bad, signed_key=bytes(65))
    assert (e.value.status, e.value.code) == (400, "bad_request")
    assert "ota_key" in e.value.detail
    assert onboard.stored() is None


# -- the CLI and the operator API --------------------------------------------------------------
def test_cli_build_publish_list_with_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    code, _, err = run_qlink(
        monkeypatch, capsys, "tenant", "create", "acme", "--data-dir", str(data)
    )
    assert code == 0, err
    tree = tmp_path / "tree"
    for path, content in _files("1.0.0").items():
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_bytes(content)
    out = tmp_path / "r.qota"
    args = ["--version", "1.0.0", "--board", "unix", "--data-dir", str(data)]
    code, stdout, err = run_qlink(
        monkeypatch, capsys, "ota", "build", str(tree), *args, "--out", str(out), "--json"
    )
    assert code == 0, err
    built = json.loads(stdout)
    assert built["release"] == "unix-1.0.0" and built["files"] == 3 and built["file"] == str(out)
    code, stdout, err = run_qlink(
        monkeypatch, capsys, "ota", "publish", str(out), "--data-dir", str(data), "--json"
    )
    assert code == 0, err
    published = json.loads(stdout)
    assert published["id"] == "unix-1.0.0" and published["bytes_served"] == 0
    code, stdout, err = run_qlink(
        monkeypatch, capsys, "ota", "list", "--data-dir", str(data), "--json"
    )
    assert code == 0 and json.loads(stdout) == [published]
    code, stdout, err = run_qlink(
        monkeypatch, capsys, "ota", "publish", str(out), "--data-dir", str(data)
    )
    assert code == 1 and stdout == ""
    assert "release unix-1.0.0 is published already" in err
    code, _, err = run_qlink(
        monkeypatch,
        capsys,
        "ota",
        "build",
        str(tree),
        *args[:2],
        "--board",
        "unix",
        "--data-dir",
        str(data),
        "--version",
        "x",
    )
    assert code == 1 and "MAJOR.MINOR.PATCH" in err
    code, _, err = run_qlink(
        monkeypatch, capsys, "ota", "list", "--data-dir", str(tmp_path / "none")
    )
    assert code == 1 and "there is no qlink data" in err
    assert not (tmp_path / "none").exists()
    # A registry without a CA: the bundle cannot be checked, and no CA is made for it.
    bare = tmp_path / "bare"
    assert run_qlink(monkeypatch, capsys, "batch", "create", "b", "--data-dir", str(bare))[0] == 0
    code, stdout, err = run_qlink(
        monkeypatch, capsys, "ota", "publish", str(out), "--data-dir", str(bare)
    )
    assert code == 1 and stdout == "" and "has no CA yet" in err
    assert not (bare / "ca").exists()


def test_operator_api_lists_and_publishes_releases(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    roles = [("default", "admin"), ("acme", "viewer"), ("acme", "admin")]
    with operator_api(settings, roles) as api:
        signer = R.ReleaseSigner.load_or_create(api.app.ca)
        bundle = _bundle(signer)

        def post(token: str, data: bytes) -> Any:
            headers = {
                "Authorization": f"Bearer {api.tokens[token]}",
                "Content-Type": "application/octet-stream",
            }
            return api.portal.call(
                lambda: api.client.post("/v1/admin/ota/releases", content=data, headers=headers)
            )

        assert api.request("GET", "/v1/admin/ota/releases", "acme-viewer").json() == []
        r = post("acme-admin", bundle)
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
        r = post("default-admin", b"not a bundle")
        assert (r.status_code, r.json()["error"]) == (400, "bad_release")
        r = post("default-admin", _bundle(signer, signature=bytes(64)))
        assert (r.status_code, r.json()["error"]) == (400, "bad_signature")
        assert not (tmp_path / "releases").exists() or not any((tmp_path / "releases").iterdir())
        r = post("default-admin", bundle)
        assert r.status_code == 201, r.text
        assert r.json()["id"] == "unix-0.2.0"
        r = post("default-admin", bundle)
        assert (r.status_code, r.json()["error"]) == (409, "release_exists")
        listed = api.request("GET", "/v1/admin/ota/releases", "acme-viewer").json()
        assert [x["id"] for x in listed] == ["unix-0.2.0"]


# -- the release key in a PKCS#11 token --------------------------------------------------------
_HSM_SCRIPT = """
import sys
from pathlib import Path
from host.server.ca import CertificateAuthority
from host.server.hsm import Pkcs11Config
from host.server import releases as R
cfg = Pkcs11Config("/usr/lib/softhsm/libsofthsm2.so", "qlink", "1234")
ca_dir = Path(sys.argv[1])
ca = CertificateAuthority.load_or_create(ca_dir, hsm=cfg)  # the issuing key in the token too
s = R.ReleaseSigner.load_or_create(ca, cfg)
assert R.signature_holds(s.cert, b"{}", s.sign(b"{}"))
assert R.check_signer(s.cert_der, ca.root_cert) == s.cert
assert not (ca_dir / "release.key").exists()
assert R.ReleaseSigner.load_or_create(ca, cfg).cert == s.cert
print("ok")
"""


def test_the_release_key_may_live_in_a_pkcs11_token_beside_the_ca_key(tmp_path: Path) -> None:
    module = Path("/usr/lib/softhsm/libsofthsm2.so")
    if not module.exists() or shutil.which("softhsm2-util") is None:
        pytest.skip("SoftHSM is not installed (apt-get install softhsm2)")
    # In a process of its own: the PKCS#11 library reads its configuration once a process.
    (tmp_path / "tokens").mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp_path / 'tokens'}\nobjectstore.backend = file\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    init = ["softhsm2-util", "--init-token", "--free", "--label", "qlink"]
    subprocess.run(
        [*init, "--so-pin", "0000", "--pin", "1234"], env=env, check=True, capture_output=True
    )
    proc = subprocess.run(
        [sys.executable, "-c", _HSM_SCRIPT, str(tmp_path / "ca")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


# -- the store on both databases ---------------------------------------------------------------
def test_the_release_store_and_the_ota_key_update_on_both_databases(database: str | Path) -> None:
    from host.server.store import Conflict, Store

    reg = Store(database)
    try:
        row = {
            "version": "0.2.0",
            "min_version": "0.1.0",
            "board": "unix",
            "files": 3,
            "size": 100,
            "payload_size": 160,
            "manifest_sha256": "ab" * 32,
        }
        first = reg.releases.insert("unix-0.2.0", **row, published_at=1.0, actor=ALICE)
        with pytest.raises(Conflict, match="published already"):
            reg.releases.insert("unix-0.2.0", **row, published_at=2.0, actor=ALICE)
        reg.releases.insert(
            "unix-0.3.0", **{**row, "version": "0.3.0"}, published_at=3.0, actor=ALICE
        )
        reg.releases.add_bytes_served("unix-0.2.0", 2**20)
        reg.releases.add_bytes_served("unix-0.2.0", 5)
        assert reg.releases.get("unix-0.2.0") == first.model_copy(
            update={"bytes_served": 2**20 + 5}
        )
        assert reg.releases.get("unix-9.0.0") is None
        assert [r.id for r in reg.releases.list()] == ["unix-0.3.0", "unix-0.2.0"]

        # The OTA key rides on the onboarding UPDATE; a proof without one keeps it.
        reg.tenants.create("acme")
        reg.batches.create("b", "acme")
        k = ec.generate_private_key(ec.SECP256R1())
        d = SimDevice("https://localhost", b"", k)
        reg.batches.import_devices("b", [d.csv_line()])
        point = _point(ec.generate_private_key(ec.SECP256R1()))
        for n, key in enumerate((point, None)):
            dev = reg.devices.get(d.device_id)
            assert dev is not None
            assert reg.challenges.complete(
                n, dev, b"cert", 5 + n, 2e9, 1.0 + n, proof_hash=f"h{n}", ota_key=key
            )
            again = reg.devices.get(d.device_id)
            assert again is not None and again.ota_key == point
    finally:
        reg.close()
