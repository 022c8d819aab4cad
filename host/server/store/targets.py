"""Targets: the brokers that serve batches' devices.

`managed` (the server's own Mosquitto) exists in every database (migration 0006). The operator
adds external Mosquitto brokers (`mosquitto`) and AWS IoT endpoints (`aws`); host/server/
targets.py checks what is given and keeps an external Mosquitto's admin password in a file of
its own, whose name (`secret`) is all the database holds of it. A batch created with the older
`--policy aws` and no target gets `aws`, an AWS IoT target without an endpoint, made when first
needed: its devices are sent to the managed broker, as they were before targets.

There is no delete: a target's name is in batches, moves and audit events.
"""

from __future__ import annotations

import builtins
import hashlib
import time
from typing import Any

from host.server.schemas import TargetRecord
from host.server.store import audit
from host.server.store.audit import LOCAL, Actor
from host.server.store.database import Database, Tx
from host.server.store.errors import Conflict, DuplicateKey, Invalid, NotFound
from host.server.store.names import check_name
from host.server.store.tenants import DEFAULT_TENANT

MANAGED = "managed"
KIND_MANAGED = "managed"
KIND_MOSQUITTO = "mosquitto"  # an external Mosquitto with the dynamic-security plugin
KIND_AWS = "aws"
KINDS = (KIND_MANAGED, KIND_MOSQUITTO, KIND_AWS)
LEGACY_AWS = "aws"  # the target of batches made with `--policy aws` and no target
# A batch's policy (its driver family) by its target's kind; `azure` rides on `managed`.
POLICY_OF_KIND = {KIND_MANAGED: "mosquitto", KIND_MOSQUITTO: "external", KIND_AWS: "aws"}
_COLUMNS = "name, kind, host, port, admin_port, ca_der, admin_user, secret, created_at"


def _out(row: dict[str, Any]) -> TargetRecord:
    ca = row["ca_der"]
    ca_der = None if ca is None else bytes(ca)
    return TargetRecord.model_construct(
        name=row["name"],
        kind=row["kind"],
        host=row["host"],
        port=row["port"],
        admin_port=row["admin_port"],
        admin_user=row["admin_user"],
        ca_sha256=None if ca_der is None else hashlib.sha256(ca_der).hexdigest(),
        created_at=row["created_at"],
        ca_der=ca_der,
        secret=row["secret"],
    )


def unknown(name: str) -> NotFound:
    return NotFound(f"target {name[:64]!r} does not exist; see: qlink target list")


def find(tx: Tx, name: str) -> TargetRecord:
    row = tx.one(f"SELECT {_COLUMNS} FROM targets WHERE name = :name", {"name": name})
    if row is None:
        raise unknown(name)
    return _out(row)


def legacy_aws(tx: Tx) -> None:
    """Make `aws` (no endpoint) unless it exists: the target of an `--policy aws` batch."""
    tx.execute(
        "INSERT INTO targets (name, kind, created_at, created_by)"
        " VALUES (:name, :kind, :now, 'policy aws') ON CONFLICT (name) DO NOTHING",
        {"name": LEGACY_AWS, "kind": KIND_AWS, "now": time.time()},
    )


class Targets:
    def __init__(self, db: Database) -> None:
        self._db = db

    def create(
        self,
        name: str,
        kind: str,
        *,
        host: str,
        port: int,
        ca_der: bytes,
        admin_port: int | None = None,
        admin_user: str | None = None,
        secret: str | None = None,
        actor: Actor = LOCAL,
    ) -> TargetRecord:
        """A new target (the caller has checked the endpoint, the CA and the credentials)."""
        check_name("target name", name)
        if kind not in (KIND_MOSQUITTO, KIND_AWS):
            raise Invalid(f"kind must be {KIND_MOSQUITTO} or {KIND_AWS}, not {kind[:32]!r}")
        now = time.time()
        taken = Conflict(f"target {name!r} already exists; pick another name")
        row = {
            "name": name,
            "kind": kind,
            "host": host,
            "port": port,
            "admin_port": admin_port,
            "ca_der": ca_der,
            "admin_user": admin_user,
            "secret": secret,
            "created_at": now,
            "by": actor.name[:128],
        }
        try:
            with self._db.transaction() as tx:
                if tx.one("SELECT 1 FROM targets WHERE name = :name", {"name": name}):
                    raise taken
                tx.execute(
                    "INSERT INTO targets (name, kind, host, port, admin_port, ca_der, admin_user,"
                    " secret, created_at, created_by) VALUES (:name, :kind, :host, :port,"
                    " :admin_port, :ca_der, :admin_user, :secret, :created_at, :by)",
                    row,
                )
                audit.record(
                    tx,
                    actor,
                    DEFAULT_TENANT,
                    "target.create",
                    f"target:{name}",
                    kind=kind,
                    host=host,
                    port=port,
                )
        except DuplicateKey:  # a concurrent create of the same name
            raise taken from None
        return _out({**row, "created_at": now})

    def get(self, name: str) -> TargetRecord:
        with self._db.transaction(write=False) as tx:
            return find(tx, name)

    def list(self) -> builtins.list[TargetRecord]:
        rows = self._db.all(f"SELECT {_COLUMNS} FROM targets ORDER BY name")
        return [_out(r) for r in rows]
