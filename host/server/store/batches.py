"""Batches: a tenant's named set of device identities, imported together, onboarding while the
batch is active, each served by one target (a broker: store/targets.py) and with the policy
driver that tells that broker about them.

A batch's policy follows from its target's kind (`targets.POLICY_OF_KIND`: managed ->
`mosquitto`, an external Mosquitto -> `external`, AWS IoT -> `aws`), except `azure`, the Azure
DPS export of devices served by the managed broker. A batch made with a policy and no target
gets the target that policy always meant: `managed`, or `aws` for `aws`.

A batch of another tenant is reported as not existing; `tenant=None` is the local operator
(the `qlink` CLI on the data directory), who sees every tenant.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from host.server.identities import ImportRow, Progress
from host.server.schemas import (
    EXPORT_FORMAT,
    STATE_REGISTERED,
    BatchExport,
    BatchOut,
    ExportedDevice,
)
from host.server.store import audit, targets, tenants
from host.server.store.audit import LOCAL, Actor
from host.server.store.database import Database, Tx
from host.server.store.errors import Conflict, DuplicateKey, ImportRejected, Invalid, NotFound
from host.server.store.names import check_name

POLICIES = ("mosquitto", "aws", "azure")
_CHUNK = 2000  # IDs per IN (...) list: far below SQLite's and PostgreSQL's parameter limits
_COLUMNS = "b.id, b.name, b.tenant, b.active, b.policy, b.created_at, b.target"


def find(tx: Tx, name: str, tenant: str | None) -> dict[str, Any]:
    """The batch row `name` of `tenant` (any tenant for None, if only one has that name)."""
    sql = f"SELECT {_COLUMNS} FROM batches b WHERE b.name = :name"
    if tenant is not None:
        sql += " AND b.tenant = :tenant"
    found = tx.all(sql, {"name": name, "tenant": tenant})
    if not found and tenant is not None:
        tenants.require(tx, tenant)  # a tenant that is not there is the thing to fix
        raise NotFound(
            f"batch {name!r} does not exist in tenant {tenant!r}; create it first: "
            f"qlink batch create {name} --tenant {tenant}"
        )
    if not found:
        raise NotFound(f"batch {name!r} does not exist; create it first: qlink batch create {name}")
    if len(found) > 1:
        owners = ", ".join(sorted(b["tenant"] for b in found))
        raise Invalid(f"batch {name!r} exists in tenants {owners}; add --tenant")
    return found[0]


def _out(row: dict[str, Any], devices: int) -> BatchOut:
    return BatchOut.model_construct(
        name=row["name"],
        tenant=row["tenant"],
        active=bool(row["active"]),
        devices=devices,
        policy=row["policy"],
        created_at=row["created_at"],
        target=row["target"],
    )


def _policy(policy: str | None, target: str | None, kind: str | None) -> str:
    """The batch policy of a new batch (see the module docstring)."""
    if policy is not None and policy not in POLICIES:
        raise Invalid(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    if kind is None:  # no target given: the policy's own
        return policy or "mosquitto"
    derived = targets.POLICY_OF_KIND[kind]
    if policy is None or policy == derived or (policy == "azure" and kind == targets.KIND_MANAGED):
        return policy or derived
    raise Invalid(
        f"policy {policy} does not go with target {target!r} (kind {kind}); leave the policy out"
    )


class Batches:
    def __init__(self, db: Database) -> None:
        self._db = db

    def create(
        self,
        name: str,
        tenant: str = "default",
        policy: str | None = None,
        actor: Actor = LOCAL,
        *,
        target: str | None = None,
    ) -> BatchOut:
        """A new, active batch served by `target` (default: the one `policy` always meant)."""
        check_name("batch name", name, 128)
        check_name("tenant", tenant, 64)
        _policy(policy, None, None)  # a bad policy is named before any target is looked up
        now = time.time()
        taken = Conflict(f"batch {name!r} already exists; pick another name")
        try:
            with self._db.transaction() as tx:
                tenants.require(tx, tenant)
                if target is None:
                    target = targets.LEGACY_AWS if policy == "aws" else targets.MANAGED
                    if target == targets.LEGACY_AWS:
                        targets.legacy_aws(tx)
                    policy = policy or "mosquitto"
                else:
                    policy = _policy(policy, target, targets.find(tx, target).kind)
                if tx.one(
                    "SELECT 1 FROM batches WHERE name = :name AND tenant = :tenant",
                    {"name": name, "tenant": tenant},
                ):
                    raise taken
                tx.execute(
                    "INSERT INTO batches (name, tenant, active, policy, created_at, target)"
                    " VALUES (:name, :tenant, TRUE, :policy, :now, :target)",
                    {
                        "name": name,
                        "tenant": tenant,
                        "policy": policy,
                        "now": now,
                        "target": target,
                    },
                )
                audit.record(
                    tx,
                    actor,
                    tenant,
                    "batch.create",
                    f"batch:{name}",
                    policy=policy,
                    target_name=target,
                )
        except DuplicateKey:  # a concurrent create of the same name
            raise taken from None
        return BatchOut(
            name=name,
            tenant=tenant,
            active=True,
            devices=0,
            policy=policy,
            created_at=now,
            target=target,
        )

    def set_target(
        self, name: str, tenant: str | None, target: str, actor: Actor = LOCAL
    ) -> BatchOut:
        """Serve the batch from `target` from now on (its policy follows the target's kind);
        idempotent: no event when it is there already."""
        with self._db.transaction() as tx:
            b = find(tx, name, tenant)
            kind = targets.find(tx, target).kind
            if b["target"] != target:
                policy = targets.POLICY_OF_KIND[kind]
                tx.execute(
                    "UPDATE batches SET target = :target, policy = :policy WHERE id = :id",
                    {"target": target, "policy": policy, "id": b["id"]},
                )
                audit.record(
                    tx,
                    actor,
                    b["tenant"],
                    "batch.move",
                    f"batch:{b['name']}",
                    from_target=b["target"],
                    to_target=target,
                )
                b.update(target=target, policy=policy)
            return _out(b, self._count(tx, b["id"]))

    def set_active(
        self, name: str, active: bool, tenant: str | None = None, actor: Actor = LOCAL
    ) -> BatchOut:
        """Enable or disable onboarding for the batch's devices (idempotent: no event when
        nothing changes); the batch as it is now."""
        with self._db.transaction() as tx:
            b = find(tx, name, tenant)
            if bool(b["active"]) != active:
                tx.execute(
                    "UPDATE batches SET active = :active WHERE id = :id",
                    {"active": active, "id": b["id"]},
                )
                action = "batch.enable" if active else "batch.disable"
                audit.record(tx, actor, b["tenant"], action, f"batch:{name}")
                b["active"] = active
            return _out(b, self._count(tx, b["id"]))

    @staticmethod
    def _count(tx: Tx, batch_id: int) -> int:
        row = tx.one("SELECT COUNT(*) AS n FROM devices WHERE batch_id = :id", {"id": batch_id})
        return int(row["n"]) if row else 0

    def list(self, tenant: str | None = None) -> list[BatchOut]:
        sql = (
            f"SELECT {_COLUMNS}, (SELECT COUNT(*) FROM devices d WHERE d.batch_id = b.id) AS n"
            " FROM batches b"
        )
        if tenant is not None:
            sql += " WHERE b.tenant = :tenant"
        sql += " ORDER BY b.tenant, b.name"
        return [_out(r, int(r["n"])) for r in self._db.all(sql, {"tenant": tenant})]

    def get(self, name: str, tenant: str | None = None) -> BatchOut:
        with self._db.transaction(write=False) as tx:
            b = find(tx, name, tenant)
            return _out(b, self._count(tx, b["id"]))

    def import_devices(
        self,
        batch: str,
        lines: Iterable[str] | str,
        *,
        tenant: str | None = None,
        fmt: str | None = None,
        actor: Actor = LOCAL,
        progress: Progress | None = None,
    ) -> int:
        """Add every row to `batch`, or none: raises ImportRejected naming each bad line.

        `lines` is CSV lines, or the whole text of a CSV or JSON file. A row already in this
        batch with the same key is left as it is, so a retried import changes nothing; a row
        registered in another batch is an error. Returns the number of devices added.
        """
        with self._db.transaction(write=False) as tx:
            find(tx, batch, tenant)  # an unknown batch is named before the file's faults
        # Imported here: the checks need cryptography, which a command that only reads the
        # store does not load.
        from host.server.identities import parse_any, parse_import

        if isinstance(lines, str):
            rows, errors = parse_any(lines, fmt, progress)
        else:
            rows, errors = parse_import(lines, progress)
        now = time.time()
        with self._db.transaction() as tx:
            b = find(tx, batch, tenant)
            existing = _existing(tx, [r.device_id for r in rows])
            new: list[ImportRow] = []
            for r in rows:
                have = existing.get(r.device_id)
                if have is None:
                    new.append(r)
                elif have[1] != b["id"]:
                    errors.append(r.refused("device is already registered in another batch"))
                elif have[0] != r.public_key:  # same ID, other key: only if SHA-256 broke
                    errors.append(r.refused("device is registered with another key"))
            if errors:
                errors.sort(key=lambda e: e.line)
                raise ImportRejected(errors)
            if new:
                tx.executemany(
                    "INSERT INTO devices (device_id, public_key, batch_id, state, disabled,"
                    " policy_exception, changed_at) VALUES (:device_id, :public_key, :batch_id,"
                    " :state, FALSE, FALSE, :now)",
                    [
                        {
                            "device_id": r.device_id,
                            "public_key": r.public_key,
                            "batch_id": b["id"],
                            "state": STATE_REGISTERED,
                            "now": now,
                        }
                        for r in new
                    ],
                )
            audit.record(
                tx,
                actor,
                b["tenant"],
                "batch.import",
                f"batch:{b['name']}",
                added=len(new),
                unchanged=len(rows) - len(new),
            )
        return len(new)

    def export(self, name: str, tenant: str | None = None) -> BatchExport:
        """The batch and its devices (an import takes it back: a restore)."""
        with self._db.transaction(write=False) as tx:
            b = find(tx, name, tenant)
            devices = tx.all(
                "SELECT device_id, public_key, state, disabled, serial, not_after, onboarded_at,"
                " revoked_at FROM devices WHERE batch_id = :id ORDER BY device_id",
                {"id": b["id"]},
            )
        return BatchExport.model_construct(
            format=EXPORT_FORMAT,
            batch={
                "name": b["name"],
                "tenant": b["tenant"],
                "active": bool(b["active"]),
                "policy": b["policy"],
                "created_at": b["created_at"],
            },
            exported_at=time.time(),
            devices=[
                ExportedDevice.model_construct(
                    **{
                        **d,
                        "public_key": bytes(d["public_key"]).hex(),
                        "disabled": bool(d["disabled"]),
                    }
                )
                for d in devices
            ],
        )


def _existing(tx: Tx, ids: list[str]) -> dict[str, tuple[bytes, int]]:
    """device ID -> (public key, batch id) for those of `ids` already registered."""
    found: dict[str, tuple[bytes, int]] = {}
    for i in range(0, len(ids), _CHUNK):
        chunk = ids[i : i + _CHUNK]
        names = {f"i{n}": v for n, v in enumerate(chunk)}
        marks = ", ".join(f":{k}" for k in names)
        for r in tx.all(
            f"SELECT device_id, public_key, batch_id FROM devices WHERE device_id IN ({marks})",
            names,
        ):
            found[r["device_id"]] = (bytes(r["public_key"]), int(r["batch_id"]))
    return found
