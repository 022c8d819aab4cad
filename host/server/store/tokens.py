"""Operator API tokens: 256 random bits shown once, stored only as their SHA-256."""

from __future__ import annotations

import hashlib
import secrets
import time

from host.server.schemas import ROLES, OperatorOut
from host.server.store import audit, tenants
from host.server.store.audit import LOCAL, Actor
from host.server.store.database import Database
from host.server.store.errors import Invalid, NotFound
from host.server.store.names import check_name

TOKEN_PREFIX = "qlk_"  # noqa: S105 (a marker, not a secret)
_MAX_TOKEN = 128


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Tokens:
    def __init__(self, db: Database) -> None:
        self._db = db

    def create(
        self, name: str, tenant: str, role: str, actor: Actor = LOCAL
    ) -> tuple[str, OperatorOut]:
        """A new token for operator `name` (returned once, stored only as its SHA-256)."""
        check_name("operator name", name, 64)
        check_name("tenant", tenant, 64)
        if role not in ROLES:
            raise Invalid(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = time.time()
        with self._db.transaction() as tx:
            tenants.require(tx, tenant)
            tx.execute(
                "INSERT INTO operators (name, tenant, role, token_hash, created_at, created_by)"
                " VALUES (:name, :tenant, :role, :hash, :now, :by)",
                {
                    "name": name,
                    "tenant": tenant,
                    "role": role,
                    "hash": token_hash(token),
                    "now": now,
                    "by": actor.name,
                },
            )
            audit.record(tx, actor, tenant, "token.create", f"operator:{name}", role=role)
        return token, OperatorOut(
            name=name, tenant=tenant, role=role, created_at=now, revoked=False
        )

    def authenticate(self, token: str) -> OperatorOut | None:
        """The live operator holding `token`, or None."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > _MAX_TOKEN:
            return None
        row = self._db.one(
            "SELECT name, tenant, role, created_at FROM operators"
            " WHERE token_hash = :hash AND revoked_at IS NULL",
            {"hash": token_hash(token)},
        )
        return None if row is None else OperatorOut.model_construct(**row, revoked=False)

    def list(self, tenant: str | None = None) -> list[OperatorOut]:
        sql = "SELECT name, tenant, role, created_at, revoked_at FROM operators"
        if tenant is not None:
            sql += " WHERE tenant = :tenant"
        sql += " ORDER BY tenant, name, id"
        return [
            OperatorOut.model_construct(
                name=r["name"],
                tenant=r["tenant"],
                role=r["role"],
                created_at=r["created_at"],
                revoked=r["revoked_at"] is not None,
            )
            for r in self._db.all(sql, {"tenant": tenant})
        ]

    def revoke(self, name: str, tenant: str, actor: Actor = LOCAL) -> int:
        """Revoke every live token of operator `name` in `tenant`; how many (0: all were
        revoked already). NotFound if the tenant never had an operator of that name: a typo
        must not look like a revocation."""
        with self._db.transaction() as tx:
            n = tx.execute(
                "UPDATE operators SET revoked_at = :now"
                " WHERE name = :name AND tenant = :tenant AND revoked_at IS NULL",
                {"now": time.time(), "name": name, "tenant": tenant},
            )
            if n:
                audit.record(tx, actor, tenant, "token.revoke", f"operator:{name}", tokens=n)
            elif not tx.one(
                "SELECT 1 AS x FROM operators WHERE name = :name AND tenant = :tenant",
                {"name": name, "tenant": tenant},
            ):
                raise NotFound(
                    f"tenant {tenant!r} has no operator {name!r}; qlink token list shows them"
                )
        return n
