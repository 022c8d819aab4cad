"""Firmware releases (docs/ota.md "Release"): the releases the server keeps, and the one place
the rest of the server imports the release API from. Its parts: host/server/otamanifest.py
(versions, paths, the manifest), otabundle.py (the release key, `qlink ota build`'s bundle and
its checks), otacrypto.py (the payload's encryption and the content key's wrap per device).

A release is checked once, when it is published, against everything a device will check (the
signer's certificate, the signature, the path rules, every file's size and hash), so a bundle
that a device would refuse is never offered. The server keeps the payload encrypted and the
content key beside it (0600): a device gets the key only wrapped to its own OTA key.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509

from host.server.otabundle import (
    KEY_LABEL,
    RELEASE_EKU,
    SIGN_LABEL,
    BadSignature,
    Bundle,
    ReleaseSigner,
    build_release,
    build_tree,
    bundle_bytes,
    check_signer,
    signature_holds,
    tree_files,
    verify_bundle,
)
from host.server.otacrypto import (
    PayloadAltered,
    WrongDevice,
    decrypt_payload,
    encrypt_payload,
    ota_public_key,
    unwrap_key,
    wrap_key,
)
from host.server.otamanifest import (
    DEFAULT_MIN_VERSION,
    MAX_FILES,
    MAX_PATH,
    MAX_TOTAL,
    FileEntry,
    Manifest,
    ReleaseError,
    check_board,
    check_path,
    manifest_bytes,
    parse_manifest,
    parse_version,
    release_id,
)
from host.server.store.errors import Conflict, NotFound

if TYPE_CHECKING:
    from host.server.schemas import DeviceRecord, ReleaseOut
    from host.server.store import Actor, Store

__all__ = [
    "DEFAULT_MIN_VERSION",
    "KEY_LABEL",
    "MAX_FILES",
    "MAX_PATH",
    "MAX_TOTAL",
    "RELEASE_EKU",
    "SIGN_LABEL",
    "BadSignature",
    "Bundle",
    "FileEntry",
    "Manifest",
    "NoOtaKey",
    "PayloadAltered",
    "ReleaseError",
    "ReleaseExists",
    "ReleaseService",
    "ReleaseSigner",
    "UnknownRelease",
    "WrongDevice",
    "build_release",
    "build_tree",
    "bundle_bytes",
    "check_board",
    "check_path",
    "check_signer",
    "decrypt_payload",
    "encrypt_payload",
    "manifest_bytes",
    "ota_public_key",
    "parse_manifest",
    "parse_version",
    "release_id",
    "signature_holds",
    "tree_files",
    "unwrap_key",
    "verify_bundle",
    "wrap_key",
]

log = logging.getLogger("qlink.ota")


class ReleaseExists(ReleaseError, Conflict):
    status = 409
    code = "release_exists"


class UnknownRelease(ReleaseError, NotFound):
    status = 404
    code = "unknown_release"


class NoOtaKey(ReleaseError, Conflict):
    status = 409
    code = "no_ota_key"


# -- the releases the server keeps -------------------------------------------------------------
_FILES = ("manifest.json", "manifest.sig", "signer.der", "payload.bin", "content.key")


@dataclass(frozen=True)
class _Kept:
    """A published release's unchanging parts, read once per process."""

    manifest: str
    signature_hex: str
    signer_b64: str
    ck: bytes
    payload_size: int


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def _publishing(directory: Path) -> Iterator[None]:
    """An exclusive flock(2) on `directory/.publish.lock` while a release is put in place."""
    fd = os.open(directory / ".publish.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the lock


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ReleaseService:
    """Publishing and serving releases under `directory` (the data directory's releases/),
    with their rows in the store. `root_cert` gives the platform root, asked only to publish."""

    def __init__(
        self, directory: Path, store: Store, root_cert: Callable[[], x509.Certificate]
    ) -> None:
        self.dir = directory
        self.store = store
        self._root_cert = root_cert
        self._kept: dict[str, _Kept] = {}
        self._lock = threading.Lock()

    def _path(self, rid: str) -> Path:
        from host.server.files import PathOutside, path_in

        try:
            return path_in(self.dir, rid)
        except PathOutside:
            raise UnknownRelease(_unknown(rid)) from None

    def publish(self, bundle: Path | bytes, actor: Actor) -> ReleaseOut:
        """Check the bundle, encrypt its payload, keep its files and record it; refused with
        ReleaseExists for a release ID published before. Nothing is kept on any refusal.

        The files are written into a temporary directory and renamed into place, then the row
        is written; a publish that dies between the two leaves a directory without a row, which
        the next publish of that ID removes. Publishes take turns (a lock file, so the CLI and
        the server's processes do too): two of one ID never meet halfway."""
        checked = verify_bundle(bundle, self._root_cert())
        m = checked.manifest
        rid = m.release_id
        if self.store.releases.get(rid) is not None:
            raise ReleaseExists(_exists(rid))
        ck, payload = encrypt_payload(rid, checked.files.values())
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self._path(rid)
        with _publishing(self.dir):
            if self.store.releases.get(rid) is not None:  # published while this one waited
                raise ReleaseExists(_exists(rid))
            if final.exists():
                # Kept by a publish that stopped before its row was written: not a release.
                log.warning("event=release_leftover_removed release=%s", rid)
                shutil.rmtree(final)
            tmp = Path(tempfile.mkdtemp(prefix=f".{rid}.", dir=self.dir))
            try:
                _write(tmp / "manifest.json", checked.manifest_bytes)
                _write(tmp / "manifest.sig", checked.signature)
                _write(tmp / "signer.der", checked.signer_der)
                _write(tmp / "payload.bin", payload)
                _write(tmp / "content.key", ck, 0o600)
                tmp.chmod(0o700)
                _fsync_dir(tmp)
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            try:
                _fsync_dir(self.dir)
                out = self.store.releases.insert(
                    rid,
                    version=m.version,
                    min_version=m.min_version,
                    board=m.board,
                    files=len(m.files),
                    size=m.size,
                    payload_size=len(payload),
                    manifest_sha256=hashlib.sha256(checked.manifest_bytes).hexdigest(),
                    published_at=time.time(),
                    actor=actor,
                )
            except BaseException as e:
                shutil.rmtree(final, ignore_errors=True)
                if isinstance(e, Conflict):
                    raise ReleaseExists(_exists(rid)) from None
                raise
        log.info("event=release_published release=%s files=%d", rid, len(m.files))
        return out

    def releases(self) -> list[ReleaseOut]:
        """Every release, newest published first."""
        return self.store.releases.list()

    def release(self, rid: str) -> ReleaseOut:
        found = self.store.releases.get(rid)
        if found is None:
            raise UnknownRelease(_unknown(rid))
        return found

    def payload_path(self, rid: str) -> Path:
        """`payload.bin` of a published release (UnknownRelease otherwise)."""
        self.release(rid)
        return self._path(rid) / "payload.bin"

    def add_bytes_served(self, rid: str, n: int) -> None:
        if n > 0:
            self.store.releases.add_bytes_served(rid, n)

    def _load(self, rid: str) -> _Kept:
        kept = self._kept.get(rid)
        if kept is not None:
            return kept
        self.release(rid)
        d = self._path(rid)
        try:
            manifest, sig, signer, ck = (
                (d / n).read_bytes()
                for n in ("manifest.json", "manifest.sig", "signer.der", "content.key")
            )
            size = (d / "payload.bin").stat().st_size
        except OSError as e:
            raise ReleaseError(
                f"release {rid}'s files in {d} cannot be read ({e.strerror}); publish it again"
            ) from None
        kept = _Kept(manifest.decode(), sig.hex(), base64.b64encode(signer).decode(), ck, size)
        with self._lock:
            self._kept[rid] = kept
        return kept

    def head(self, rid: str, device: DeviceRecord) -> dict[str, Any]:
        """The device API's head answer for `device` (docs/ota.md "Device API"): the manifest,
        its signature, the signer and the content key wrapped to the device's OTA key;
        NoOtaKey when the device never sent one."""
        kept = self._load(rid)
        if device.ota_key is None:
            raise NoOtaKey(
                f"device {device.device_id} has sent no OTA key (its firmware predates OTA); "
                "it cannot be offered an update"
            )
        return {
            "release": rid,
            "manifest": kept.manifest,
            "signature": kept.signature_hex,
            "signer_b64": kept.signer_b64,
            "payload_size": kept.payload_size,
            "wrap": wrap_key(rid, device.device_id, device.ota_key, kept.ck),
        }


def _unknown(rid: str) -> str:
    return f"release {rid[:80]!r} does not exist; see: qlink ota list"


def _exists(rid: str) -> str:
    return (
        f"release {rid} is published already; a release ID (board-version) is published once: "
        "build a new version"
    )
