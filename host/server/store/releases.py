"""Firmware releases (docs/ota.md "Release"): one row per published release; its files live
under the data directory's releases/<id>/ (host/server/releases.py writes them before the row).
A release never changes once published, except the count of payload bytes served."""

from __future__ import annotations

import builtins
from typing import Any

from host.server.schemas import ReleaseOut
from host.server.store import audit
from host.server.store.audit import Actor
from host.server.store.database import Database
from host.server.store.errors import Conflict, DuplicateKey
from host.server.store.tenants import DEFAULT_TENANT

_COLUMNS = (
    "id, version, min_version, board, files, size, payload_size, manifest_sha256,"
    " published_at, published_by, bytes_served"
)


def _out(row: dict[str, Any]) -> ReleaseOut:
    return ReleaseOut.model_construct(
        id=row["id"],
        version=row["version"],
        min_version=row["min_version"],
        board=row["board"],
        files=row["files"],
        size=row["size"],
        payload_size=row["payload_size"],
        manifest_sha256=row["manifest_sha256"],
        published_at=row["published_at"],
        published_by=row["published_by"],
        bytes_served=int(row["bytes_served"] or 0),
    )


class Releases:
    def __init__(self, db: Database) -> None:
        self._db = db

    def insert(
        self,
        release_id: str,
        *,
        version: str,
        min_version: str,
        board: str,
        files: int,
        size: int,
        payload_size: int,
        manifest_sha256: str,
        published_at: float,
        actor: Actor,
    ) -> ReleaseOut:
        """Record a published release with its audit event; Conflict if the ID is taken."""
        row = {
            "id": release_id,
            "version": version,
            "min_version": min_version,
            "board": board,
            "files": files,
            "size": size,
            "payload_size": payload_size,
            "manifest_sha256": manifest_sha256,
            "published_at": published_at,
            "published_by": actor.name[:128],
            "bytes_served": 0,
        }
        taken = Conflict(f"release {release_id} is published already")
        try:
            with self._db.transaction() as tx:
                if tx.one("SELECT 1 FROM ota_releases WHERE id = :id", {"id": release_id}):
                    raise taken
                tx.execute(
                    f"INSERT INTO ota_releases ({_COLUMNS}) VALUES (:id, :version, :min_version,"
                    " :board, :files, :size, :payload_size, :manifest_sha256, :published_at,"
                    " :published_by, :bytes_served)",
                    row,
                )
                # Releases are the platform's, for every tenant: their events are the default
                # tenant's, as targets' are.
                audit.record(
                    tx,
                    actor,
                    DEFAULT_TENANT,
                    "release.publish",
                    f"release:{release_id}",
                    version=version,
                    board=board,
                    files=files,
                    manifest_sha256=manifest_sha256,
                )
        except DuplicateKey:  # a concurrent publish of the same release
            raise taken from None
        return _out(row)

    def get(self, release_id: str) -> ReleaseOut | None:
        row = self._db.one(
            f"SELECT {_COLUMNS} FROM ota_releases WHERE id = :id", {"id": release_id}
        )
        return None if row is None else _out(row)

    def list(self) -> builtins.list[ReleaseOut]:
        """Newest published first."""
        rows = self._db.all(f"SELECT {_COLUMNS} FROM ota_releases ORDER BY published_at DESC, id")
        return [_out(r) for r in rows]

    def add_bytes_served(self, release_id: str, n: int) -> None:
        """Count `n` more payload bytes sent for the release (one UPDATE, no read)."""
        self._db.write_one(
            "UPDATE ota_releases SET bytes_served = bytes_served + :n WHERE id = :id",
            {"n": n, "id": release_id},
        )
