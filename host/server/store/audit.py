"""The audit log: one event per state change, written by the store in the same transaction as
the change it records, so the log and the state never disagree."""

from __future__ import annotations

import builtins
import json
import time
from dataclasses import dataclass
from typing import Any

from host.server.schemas import AuditOut
from host.server.store.database import Database, Tx

_INSERT = (
    "INSERT INTO audit (at, actor, source, tenant, action, target, detail) "
    "VALUES (:at, :actor, :source, :tenant, :action, :target, :detail)"
)


@dataclass(frozen=True)
class Actor:
    """Who makes a change and from where, for the audit log."""

    name: str
    source: str = "local"


LOCAL = Actor("cli", "local")


def record(tx: Tx, actor: Actor, tenant: str, action: str, target: str, **detail: Any) -> None:
    """Add one event inside the transaction `tx` that makes the change."""
    tx.execute(
        _INSERT,
        {
            "at": time.time(),
            "actor": actor.name[:128],
            "source": actor.source[:128],
            "tenant": tenant,
            "action": action,
            "target": target[:200],
            "detail": json.dumps(detail, sort_keys=True),
        },
    )


class AuditLog:
    def __init__(self, db: Database) -> None:
        self._db = db

    def list(
        self,
        tenant: str | None = None,
        *,
        action: str | None = None,
        target: str | None = None,
        since: float | None = None,
        limit: int = 1000,
    ) -> list[AuditOut]:
        """Newest first."""
        where: list[str] = []
        params: dict[str, Any] = {"limit": limit}
        for column, value in (("tenant", tenant), ("action", action), ("target", target)):
            if value is not None:
                where.append(f"{column} = :{column}")
                params[column] = value
        if since is not None:
            where.append("at >= :since")
            params["since"] = since
        sql = (
            "SELECT at, actor, source, tenant, action, target, detail FROM audit"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY id DESC LIMIT :limit"
        )
        return [
            AuditOut.model_construct(**{**row, "detail": json.loads(row["detail"])})
            for row in self._db.all(sql, params)
        ]

    def page(
        self,
        tenant: str | None,
        *,
        action: str | None = None,
        target_prefix: str | None = None,
        actor: str | None = None,
        before: int | None = None,
        limit: int = 50,
    ) -> builtins.list[tuple[int, AuditOut]]:
        """A keyset page, newest first: (id, event) for events with id below `before` (the
        last id of the previous page), `target` starting with `target_prefix`."""
        where: builtins.list[str] = []
        params: dict[str, Any] = {"limit": limit}
        for column, value in (("tenant", tenant), ("action", action), ("actor", actor)):
            if value is not None:
                where.append(f"{column} = :{column}")
                params[column] = value
        if target_prefix:
            # Not LIKE: the prefix's own % and _ are plain characters, and case counts.
            where.append("substr(target, 1, :plen) = :prefix")
            params["plen"], params["prefix"] = len(target_prefix), target_prefix
        if before is not None:
            where.append("id < :before")
            params["before"] = before
        sql = (
            "SELECT id, at, actor, source, tenant, action, target, detail FROM audit"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY id DESC LIMIT :limit"
        )
        out: builtins.list[tuple[int, AuditOut]] = []
        for row in self._db.all(sql, params):
            event = {k: row[k] for k in ("at", "actor", "source", "tenant", "action", "target")}
            detail = json.loads(row["detail"])
            out.append((int(row["id"]), AuditOut.model_construct(**event, detail=detail)))
        return out

    def actions(self, tenant: str | None) -> builtins.list[str]:
        """The actions the log holds (of `tenant`), sorted: the console's filter choices."""
        sql = "SELECT DISTINCT action FROM audit"
        if tenant is not None:
            sql += " WHERE tenant = :tenant"
        return sorted(str(r["action"]) for r in self._db.all(sql, {"tenant": tenant}))
