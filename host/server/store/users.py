"""Console users and their sessions (docs/console.md "Users and sessions").

A user belongs to one tenant with one role, like an operator token. Its password is stored as an
argon2id hash (made and checked by host/server/console/auth.py, never here). A session is 32
random bytes in the browser's cookie; the store keeps only their SHA-256, with the session's own
CSRF token. A session ends at logout, `ABSOLUTE_S` after it began, or `IDLE_S` after its last
request; deleting a user ends all of its sessions. Every change is in the audit log.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from host.server.schemas import ROLES
from host.server.store import audit, tenants
from host.server.store.audit import LOCAL, Actor
from host.server.store.database import Database, Tx
from host.server.store.errors import Conflict, Invalid, NotFound
from host.server.store.names import check_name

IDLE_S = 3600.0  # a session ends after an hour without a request
ABSOLUTE_S = 12 * 3600.0  # and 12 hours after it began, whatever happens
TOUCH_S = 60.0  # last_seen is written at most once a minute per session
_COLUMNS = (
    "id, name, tenant, role, password_hash, created_at, created_by, failed_logins, "
    "locked_until, disabled_at"
)


@dataclass(frozen=True)
class UserRecord:
    id: int
    name: str
    tenant: str
    role: str
    created_at: float
    created_by: str
    failed_logins: int
    locked_until: float | None
    disabled_at: float | None
    password_hash: str = field(repr=False)

    def locked(self, now: float) -> bool:
        return self.locked_until is not None and self.locked_until > now

    def public(self, now: float | None = None) -> dict[str, Any]:
        """What `qlink user list --json` shows (never the hash)."""
        at = time.time() if now is None else now
        return {
            "name": self.name,
            "tenant": self.tenant,
            "role": self.role,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "failed_logins": self.failed_logins,
            "locked_until": self.locked_until if self.locked(at) else None,
            "disabled": self.disabled_at is not None,
        }


@dataclass(frozen=True)
class SessionRecord:
    user: UserRecord
    csrf: str
    created_at: float
    expires_at: float
    last_seen: float


def session_hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _user(row: Any) -> UserRecord:
    return UserRecord(
        id=row["id"],
        name=row["name"],
        tenant=row["tenant"],
        role=row["role"],
        created_at=row["created_at"],
        created_by=row["created_by"],
        failed_logins=row["failed_logins"],
        locked_until=row["locked_until"],
        disabled_at=row["disabled_at"],
        password_hash=row["password_hash"],
    )


class Users:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- users ---------------------------------------------------------------------------------
    def create(
        self, name: str, tenant: str, role: str, password_hash: str, actor: Actor = LOCAL
    ) -> UserRecord:
        """A new user (the caller hashed its password). Invalid for a bad name or role,
        NotFound for an unknown tenant, Conflict for a name already taken."""
        check_name("user name", name)
        check_name("tenant", tenant)
        if role not in ROLES:
            raise Invalid(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        now = time.time()
        with self._db.transaction() as tx:
            tenants.require(tx, tenant)
            if tx.one("SELECT 1 FROM console_users WHERE name = :n", {"n": name}) is not None:
                raise Conflict(f"a user named {name} exists; choose another name")
            tx.execute(
                "INSERT INTO console_users (name, tenant, role, password_hash, created_at,"
                " created_by, failed_logins) VALUES (:name, :tenant, :role, :hash, :now, :by, 0)",
                {
                    "name": name,
                    "tenant": tenant,
                    "role": role,
                    "hash": password_hash,
                    "now": now,
                    "by": actor.name,
                },
            )
            audit.record(tx, actor, tenant, "user.create", f"user:{name}", role=role)
            row = tx.one(f"SELECT {_COLUMNS} FROM console_users WHERE name = :n", {"n": name})
        assert row is not None
        return _user(row)

    def get(self, name: str) -> UserRecord | None:
        row = self._db.one(f"SELECT {_COLUMNS} FROM console_users WHERE name = :n", {"n": name})
        return None if row is None else _user(row)

    def require(self, name: str) -> UserRecord:
        user = self.get(name)
        if user is None:
            raise NotFound(f"no user named {name!r}; see: qlink user list")
        return user

    def list(self, tenant: str | None = None) -> list[UserRecord]:
        sql = f"SELECT {_COLUMNS} FROM console_users"
        if tenant is not None:
            sql += " WHERE tenant = :tenant"
        return [_user(r) for r in self._db.all(sql + " ORDER BY tenant, name", {"tenant": tenant})]

    def delete(self, name: str, actor: Actor = LOCAL) -> int:
        """Delete user `name` and every session of it; how many sessions ended."""
        with self._db.transaction() as tx:
            user = self._locked_row(tx, name)
            n = tx.execute("DELETE FROM console_sessions WHERE user_id = :id", {"id": user.id})
            tx.execute("DELETE FROM console_users WHERE id = :id", {"id": user.id})
            audit.record(tx, actor, user.tenant, "user.delete", f"user:{name}", sessions=n)
        return n

    def unlock(self, name: str, actor: Actor = LOCAL) -> UserRecord:
        """Clear the lockout and the failed-login count of `name`."""
        with self._db.transaction() as tx:
            user = self._locked_row(tx, name)
            tx.execute(
                "UPDATE console_users SET failed_logins = 0, locked_until = NULL WHERE id = :id",
                {"id": user.id},
            )
            audit.record(tx, actor, user.tenant, "user.unlock", f"user:{name}")
        return self.require(name)

    def set_password_hash(self, name: str, password_hash: str, actor: Actor = LOCAL) -> None:
        """Store a new hash of the same password (re-hashed with new parameters at login)."""
        with self._db.transaction() as tx:
            user = self._locked_row(tx, name)
            tx.execute(
                "UPDATE console_users SET password_hash = :h WHERE id = :id",
                {"h": password_hash, "id": user.id},
            )
            audit.record(tx, actor, user.tenant, "user.rehash", f"user:{name}")

    def login_failed(
        self, name: str, actor: Actor, *, max_failures: int, lockout_s: float
    ) -> UserRecord:
        """Count a failed login; the `max_failures`-th in a row locks the user for
        `lockout_s` (and starts the count again)."""
        now = time.time()
        with self._db.transaction() as tx:
            user = self._locked_row(tx, name)
            failures = user.failed_logins + 1
            locked_until = None
            if failures >= max_failures:
                failures, locked_until = 0, now + lockout_s
            tx.execute(
                "UPDATE console_users SET failed_logins = :f,"
                " locked_until = COALESCE(:until, locked_until) WHERE id = :id",
                {"f": failures, "until": locked_until, "id": user.id},
            )
            audit.record(tx, actor, user.tenant, "user.login_failed", f"user:{name}")
            if locked_until is not None:
                audit.record(
                    tx, actor, user.tenant, "user.lock", f"user:{name}", until=locked_until
                )
        return self.require(name)

    def login_succeeded(self, name: str, actor: Actor) -> tuple[str, SessionRecord]:
        """Reset the failed-login count and begin a session: (the cookie's value, shown only
        here, and the session)."""
        now = time.time()
        with self._db.transaction() as tx:
            user = self._locked_row(tx, name)
            tx.execute(
                "UPDATE console_users SET failed_logins = 0, locked_until = NULL WHERE id = :id",
                {"id": user.id},
            )
            value, session = self._create_session(tx, user, actor, now)
            audit.record(tx, actor, user.tenant, "user.login", f"user:{name}")
        return value, session

    def _locked_row(self, tx: Tx, name: str) -> UserRecord:
        row = tx.one(f"SELECT {_COLUMNS} FROM console_users WHERE name = :n", {"n": name})
        if row is None:
            raise NotFound(f"no user named {name!r}; see: qlink user list")
        return _user(row)

    # -- sessions ------------------------------------------------------------------------------
    def create_session(self, name: str, actor: Actor = LOCAL) -> tuple[str, SessionRecord]:
        """A new session of user `name`: (the cookie's value, the session)."""
        with self._db.transaction() as tx:
            user = self._locked_row(tx, name)
            value, session = self._create_session(tx, user, actor, time.time())
            audit.record(tx, actor, user.tenant, "session.create", f"user:{name}")
        return value, session

    @staticmethod
    def _create_session(
        tx: Tx, user: UserRecord, actor: Actor, now: float
    ) -> tuple[str, SessionRecord]:
        value = secrets.token_urlsafe(32)  # 32 random bytes
        csrf = secrets.token_hex(32)
        tx.execute(
            "INSERT INTO console_sessions (id_hash, user_id, csrf, created_at, expires_at,"
            " last_seen, source) VALUES (:h, :uid, :csrf, :now, :exp, :now, :src)",
            {
                "h": session_hash(value),
                "uid": user.id,
                "csrf": csrf,
                "now": now,
                "exp": now + ABSOLUTE_S,
                "src": actor.source[:128],
            },
        )
        return value, SessionRecord(user, csrf, now, now + ABSOLUTE_S, now)

    def session(self, value: str, now: float | None = None) -> SessionRecord | None:
        """The live session whose cookie is `value`, or None (an expired one is deleted).
        Refreshes its last request time at most once a minute."""
        if not value or len(value) > 128:
            return None
        at = time.time() if now is None else now
        h = session_hash(value)
        row = self._db.one(
            "SELECT s.csrf AS s_csrf, s.created_at AS s_created, s.expires_at AS s_expires,"
            f" s.last_seen AS s_seen, {', '.join('u.' + c.strip() for c in _COLUMNS.split(','))}"
            " FROM console_sessions s JOIN console_users u ON u.id = s.user_id"
            " WHERE s.id_hash = :h",
            {"h": h},
        )
        if row is None:
            return None
        user = _user(row)
        if row["s_expires"] <= at or row["s_seen"] + IDLE_S <= at or user.disabled_at is not None:
            self._db.write_one("DELETE FROM console_sessions WHERE id_hash = :h", {"h": h})
            return None
        seen = row["s_seen"]
        if at - seen >= TOUCH_S:
            self._db.write_one(
                "UPDATE console_sessions SET last_seen = :at WHERE id_hash = :h", {"at": at, "h": h}
            )
            seen = at
        return SessionRecord(user, row["s_csrf"], row["s_created"], row["s_expires"], seen)

    def end_session(self, value: str, actor: Actor = LOCAL) -> bool:
        """Logout: delete the session whose cookie is `value`; whether there was one."""
        h = session_hash(value)
        with self._db.transaction() as tx:
            row = tx.one(
                "SELECT u.name AS name, u.tenant AS tenant FROM console_sessions s"
                " JOIN console_users u ON u.id = s.user_id WHERE s.id_hash = :h",
                {"h": h},
            )
            if row is None:
                return False
            tx.execute("DELETE FROM console_sessions WHERE id_hash = :h", {"h": h})
            audit.record(tx, actor, row["tenant"], "user.logout", f"user:{row['name']}")
        return True

    def end_sessions(self, name: str, actor: Actor = LOCAL) -> int:
        """End every session of user `name`; how many."""
        with self._db.transaction() as tx:
            user = self._locked_row(tx, name)
            n = tx.execute("DELETE FROM console_sessions WHERE user_id = :id", {"id": user.id})
            audit.record(tx, actor, user.tenant, "session.delete_all", f"user:{name}", sessions=n)
        return n
