"""Tenants: the records that batches and operator tokens belong to.

A batch or a token is made only in a tenant that exists (`require`, inside the transaction that
makes it), so a mistyped `--tenant` is refused instead of quietly starting a new tenant whose
batches, topics (`qlink/<tenant>/...`) and AWS policies nobody meant to have. `default` exists in
every database (migration 0003 makes it, with every tenant older records name), so the first
batch of a new data directory needs no step before it.

Reads take `tenant`: an operator token's tenant sees only itself (any other is reported as not
existing); `None` is the local operator (the `qlink` CLI on the data directory), who sees every
tenant. There is no delete: a tenant's name is in its devices' topics and its audit events, and
a second tenant of the same name would inherit both.
"""

from __future__ import annotations

import time
from typing import Any

from host.server.schemas import TenantOut
from host.server.store import audit
from host.server.store.audit import LOCAL, Actor
from host.server.store.database import Database, Tx
from host.server.store.errors import Conflict, DuplicateKey, NotFound
from host.server.store.names import check_name

DEFAULT_TENANT = "default"  # made by migration 0003; the platform operator's tenant
# One statement: each tenant with its batch and device counts (batches.tenant is indexed).
_LIST = (
    "SELECT t.name, t.created_at,"
    " (SELECT COUNT(*) FROM batches b WHERE b.tenant = t.name) AS batches,"
    " (SELECT COUNT(*) FROM devices d JOIN batches b ON b.id = d.batch_id"
    " WHERE b.tenant = t.name) AS devices"
    " FROM tenants t"
)


def unknown(name: str) -> NotFound:
    """The refusal of a record in tenant `name`, which does not exist: it says what to do."""
    return NotFound(f"tenant {name!r} does not exist; create it first: qlink tenant create {name}")


def require(tx: Tx, name: str) -> None:
    """Raise `unknown(name)` unless tenant `name` exists. Called inside the transaction that
    makes a record in the tenant; tenants are never deleted, so the answer cannot go stale
    before it commits."""
    if tx.one("SELECT 1 FROM tenants WHERE name = :name", {"name": name}) is None:
        raise unknown(name)


def _out(row: dict[str, Any]) -> TenantOut:
    return TenantOut.model_construct(
        name=row["name"],
        created_at=row["created_at"],
        batches=int(row["batches"]),
        devices=int(row["devices"]),
    )


class Tenants:
    def __init__(self, db: Database) -> None:
        self._db = db

    def create(self, name: str, actor: Actor = LOCAL) -> TenantOut:
        check_name("tenant", name, 64)
        now = time.time()
        taken = Conflict(
            f"tenant {name!r} already exists; use it (--tenant {name}) or pick another name"
        )
        try:
            with self._db.transaction() as tx:
                if tx.one("SELECT 1 FROM tenants WHERE name = :name", {"name": name}):
                    raise taken
                tx.execute(
                    "INSERT INTO tenants (name, created_at, created_by) VALUES (:name, :now, :by)",
                    {"name": name, "now": now, "by": actor.name[:128]},
                )
                audit.record(tx, actor, name, "tenant.create", f"tenant:{name}")
        except DuplicateKey:  # a concurrent create of the same name
            raise taken from None
        return TenantOut(name=name, created_at=now, batches=0, devices=0)

    def list(self, tenant: str | None = None) -> list[TenantOut]:
        """Every tenant (`tenant` None), or only `tenant` itself."""
        sql = _LIST + (" WHERE t.name = :tenant" if tenant is not None else "") + " ORDER BY t.name"
        return [_out(r) for r in self._db.all(sql, {"tenant": tenant})]

    def get(self, name: str, tenant: str | None = None) -> TenantOut:
        """Tenant `name`, as `tenant` sees it (another tenant does not exist for it)."""
        if tenant is not None and name != tenant:
            raise unknown(name)
        row = self._db.one(_LIST + " WHERE t.name = :name", {"name": name})
        if row is None:
            raise unknown(name)
        return _out(row)

    def exists(self, name: str) -> bool:
        return self._db.one("SELECT 1 FROM tenants WHERE name = :name", {"name": name}) is not None
