"""The registry: tenants' batches and devices, onboarding challenges, revoked certificates,
operator tokens and the audit log, over SQLAlchemy 2 (SQLite WAL by default, or PostgreSQL).

Every state change writes its audit event in the same transaction, so the log and the state
never disagree. Every tenant-scoped read or change takes `tenant`: a batch or device of another
tenant is reported as not existing (the API answers 404 and leaks nothing). `tenant=None` is the
local operator (the `qlink` CLI on the data directory), who sees every tenant.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from host.server import ServerError
from host.server.db import database_url, make_engine, migrate
from host.server.hotsql import Statement, transaction
from host.server.identities import (
    EXPORT_FORMAT,
    ImportRow,
    Progress,
    RowError,
    parse_any,
    parse_import,
    public_key_error,
)
from host.server.models import (
    ROLES,
    STATE_ONBOARDED,
    STATE_REGISTERED,
    STATE_REVOKED,
    AuditEvent,
    Batch,
    Challenge,
    Device,
    Operator,
    Revoked,
)

__all__ = [
    "STATE_ONBOARDED",
    "STATE_REGISTERED",
    "STATE_REVOKED",
    "Actor",
    "ImportRejected",
    "NotFound",
    "Registry",
    "RegistryError",
    "RowError",
    "parse_import",
    "public_key_error",
]
_CHUNK = 2000  # rows per IN (...) query: far below SQLite's and PostgreSQL's parameter limits
TOKEN_PREFIX = "qlk_"  # noqa: S105 (a marker, not a secret)


class RegistryError(ServerError):
    pass


class NotFound(RegistryError):
    """No such batch/device/token for this tenant (it may exist for another: never say so)."""


class Conflict(RegistryError):
    pass


class ImportRejected(RegistryError):
    """At least one row is bad; nothing was imported."""

    def __init__(self, errors: list[RowError]) -> None:
        super().__init__(errors)
        self.errors = errors

    def __str__(self) -> str:
        rows = "; ".join(str(e) for e in self.errors[:20])
        more = f"; and {len(self.errors) - 20} more" if len(self.errors) > 20 else ""
        return f"{len(self.errors)} bad row(s), nothing imported: {rows}{more}"


@dataclass(frozen=True)
class Actor:
    """Who makes a change and from where, for the audit log."""

    name: str
    source: str = "local"


LOCAL = Actor("cli", "local")


# -- read models ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchInfo:
    name: str
    tenant: str
    active: bool
    devices: int
    policy: str = "mosquitto"
    created_at: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tenant": self.tenant,
            "active": self.active,
            "devices": self.devices,
            "policy": self.policy,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class DeviceInfo:
    device_id: str
    public_key: bytes
    batch: str
    tenant: str
    batch_active: bool
    state: str
    cert_der: bytes | None
    serial: str | None
    not_after: float | None
    onboarded_at: float | None
    last_seen: float | None
    last_telemetry: dict[str, Any] | None
    disabled: bool = False
    revoked_at: float | None = None
    policy: str = "mosquitto"
    policy_exception: bool = False  # the broker may hold a deny entry for it (models.Device)

    def as_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "batch": self.batch,
            "tenant": self.tenant,
            "state": self.state,
            "disabled": self.disabled,
            "serial": self.serial,
            "not_after": self.not_after,
            "onboarded_at": self.onboarded_at,
            "revoked_at": self.revoked_at,
            "last_seen": self.last_seen,
            "last_telemetry": self.last_telemetry,
        }


@dataclass(frozen=True)
class ChallengeInfo:
    id: str
    device_id: str
    challenge: bytes
    expires: int
    used_at: float | None
    proof_hash: str | None = None


@dataclass(frozen=True)
class OperatorInfo:
    name: str
    tenant: str
    role: str
    created_at: float
    revoked: bool

    def may(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "tenant": self.tenant, "role": self.role}


@dataclass(frozen=True)
class AuditInfo:
    at: float
    actor: str
    source: str
    tenant: str
    action: str
    target: str
    detail: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "actor": self.actor,
            "source": self.source,
            "tenant": self.tenant,
            "action": self.action,
            "target": self.target,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class RevokedCert:
    serial: int
    revoked_at: float


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _check_name(kind: str, name: str, limit: int) -> None:
    if (
        not isinstance(name, str)
        or not 0 < len(name) <= limit
        or not name.isprintable()
        or any(c in name for c in ",/ ")
    ):
        raise RegistryError(
            f"{kind} must be 1..{limit} printable characters without commas, slashes or spaces"
        )


class Registry:
    def __init__(self, target: Path | str, *, run_migrations: bool = True) -> None:
        self.url = database_url(target)
        self.path = Path(target) if "://" not in str(target) else None
        self.engine: Engine = make_engine(self.url)
        if run_migrations:
            migrate(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._last_purge = 0.0

    def close(self) -> None:
        self.engine.dispose()

    @cached_property
    def _hot(self) -> _HotPath:
        return _HotPath(self.engine.dialect)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self._sessions.begin() as s:
            yield s

    # -- audit -------------------------------------------------------------------------------
    @staticmethod
    def _audit(
        s: Session,
        actor: Actor,
        tenant: str,
        action: str,
        target: str,
        **detail: Any,
    ) -> None:
        s.add(
            AuditEvent(
                at=time.time(),
                actor=actor.name[:128],
                source=actor.source[:128],
                tenant=tenant,
                action=action,
                target=target[:200],
                detail=json.dumps(detail, sort_keys=True),
            )
        )

    def audit(
        self,
        tenant: str | None = None,
        *,
        action: str | None = None,
        target: str | None = None,
        since: float | None = None,
        limit: int = 1000,
    ) -> list[AuditInfo]:
        """Newest first."""
        q = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
        if tenant is not None:
            q = q.where(AuditEvent.tenant == tenant)
        if action is not None:
            q = q.where(AuditEvent.action == action)
        if target is not None:
            q = q.where(AuditEvent.target == target)
        if since is not None:
            q = q.where(AuditEvent.at >= since)
        with self.transaction() as s:
            return [
                AuditInfo(
                    e.at, e.actor, e.source, e.tenant, e.action, e.target, json.loads(e.detail)
                )
                for e in s.scalars(q)
            ]

    # -- operators ---------------------------------------------------------------------------
    def create_token(
        self, name: str, tenant: str, role: str, actor: Actor = LOCAL
    ) -> tuple[str, OperatorInfo]:
        """A new API token (returned once, stored only as its SHA-256)."""
        _check_name("operator name", name, 64)
        _check_name("tenant", tenant, 64)
        if role not in ROLES:
            raise RegistryError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = time.time()
        with self.transaction() as s:
            s.add(
                Operator(
                    name=name,
                    tenant=tenant,
                    role=role,
                    token_hash=_token_hash(token),
                    created_at=now,
                    created_by=actor.name,
                )
            )
            self._audit(s, actor, tenant, "token.create", f"operator:{name}", role=role)
        return token, OperatorInfo(name, tenant, role, now, False)

    def authenticate(self, token: str) -> OperatorInfo | None:
        if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            return None
        with self.transaction() as s:
            op = s.scalar(select(Operator).where(Operator.token_hash == _token_hash(token)))
            if op is None or op.revoked_at is not None:
                return None
            return OperatorInfo(op.name, op.tenant, op.role, op.created_at, False)

    def operators(self, tenant: str | None = None) -> list[OperatorInfo]:
        q = select(Operator).order_by(Operator.tenant, Operator.name, Operator.id)
        if tenant is not None:
            q = q.where(Operator.tenant == tenant)
        with self.transaction() as s:
            return [
                OperatorInfo(o.name, o.tenant, o.role, o.created_at, o.revoked_at is not None)
                for o in s.scalars(q)
            ]

    def revoke_tokens(self, name: str, tenant: str, actor: Actor = LOCAL) -> int:
        """Revoke every live token of operator `name` in `tenant`; how many."""
        with self.transaction() as s:
            r = s.execute(
                update(Operator)
                .where(
                    Operator.name == name,
                    Operator.tenant == tenant,
                    Operator.revoked_at.is_(None),
                )
                .values(revoked_at=time.time())
            )
            n = int(r.rowcount)  # type: ignore[attr-defined]
            if n:
                self._audit(s, actor, tenant, "token.revoke", f"operator:{name}", tokens=n)
            return n

    # -- batches -----------------------------------------------------------------------------
    @staticmethod
    def _batch(s: Session, name: str, tenant: str | None) -> Batch:
        q = select(Batch).where(Batch.name == name)
        if tenant is not None:
            q = q.where(Batch.tenant == tenant)
        found = list(s.scalars(q))
        if not found:
            raise NotFound(
                f"batch {name!r} does not exist; create it first: qlink batch create {name}"
            )
        if len(found) > 1:
            tenants = ", ".join(sorted(b.tenant for b in found))
            raise RegistryError(f"batch {name!r} exists in tenants {tenants}; add --tenant")
        return found[0]

    def create_batch(
        self,
        name: str,
        tenant: str = "default",
        policy: str = "mosquitto",
        actor: Actor = LOCAL,
    ) -> BatchInfo:
        _check_name("batch name", name, 128)
        _check_name("tenant", tenant, 64)
        now = time.time()
        try:
            with self.transaction() as s:
                if s.scalar(select(Batch).where(Batch.name == name, Batch.tenant == tenant)):
                    raise Conflict(f"batch {name!r} already exists; pick another name")
                s.add(Batch(name=name, tenant=tenant, active=True, policy=policy, created_at=now))
                self._audit(s, actor, tenant, "batch.create", f"batch:{name}", policy=policy)
        except IntegrityError:  # a concurrent create of the same name
            raise Conflict(f"batch {name!r} already exists; pick another name") from None
        return BatchInfo(name, tenant, True, 0, policy, now)

    def set_batch_active(
        self, name: str, active: bool, tenant: str | None = None, actor: Actor = LOCAL
    ) -> None:
        with self.transaction() as s:
            b = self._batch(s, name, tenant)
            if b.active != active:
                b.active = active
                action = "batch.enable" if active else "batch.disable"
                self._audit(s, actor, b.tenant, action, f"batch:{name}")

    def batches(self, tenant: str | None = None) -> list[BatchInfo]:
        with self.transaction() as s:
            counts = dict(
                s.execute(select(Device.batch_id, func.count()).group_by(Device.batch_id)).all()
            )
            q = select(Batch).order_by(Batch.tenant, Batch.name)
            if tenant is not None:
                q = q.where(Batch.tenant == tenant)
            return [
                BatchInfo(b.name, b.tenant, b.active, counts.get(b.id, 0), b.policy, b.created_at)
                for b in s.scalars(q)
            ]

    def batch(self, name: str, tenant: str | None = None) -> BatchInfo:
        with self.transaction() as s:
            b = self._batch(s, name, tenant)
            n = s.scalar(select(func.count()).where(Device.batch_id == b.id)) or 0
            return BatchInfo(b.name, b.tenant, b.active, n, b.policy, b.created_at)

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
        if isinstance(lines, str):
            rows, errors = parse_any(lines, fmt, progress)
        else:
            rows, errors = parse_import(lines, progress)
        with self.transaction() as s:
            b = self._batch(s, batch, tenant)
            existing: dict[str, tuple[bytes, int]] = {}
            ids = [r.device_id for r in rows]
            for i in range(0, len(ids), _CHUNK):
                q = select(Device.device_id, Device.public_key, Device.batch_id).where(
                    Device.device_id.in_(ids[i : i + _CHUNK])
                )
                existing.update((d, (k, bid)) for d, k, bid in s.execute(q))
            new: list[ImportRow] = []
            for r in rows:
                have = existing.get(r.device_id)
                if have is None:
                    new.append(r)
                elif have[1] != b.id:
                    errors.append(RowError(r.line, "device is already registered in another batch"))
                elif have[0] != r.public_key:  # same ID, other key: only if SHA-256 broke
                    errors.append(RowError(r.line, "device is registered with another key"))
            if errors:
                errors.sort(key=lambda e: e.line)
                raise ImportRejected(errors)
            if new:
                s.execute(
                    insert(Device),
                    [
                        {
                            "device_id": r.device_id,
                            "public_key": r.public_key,
                            "batch_id": b.id,
                            "state": STATE_REGISTERED,
                            "disabled": False,
                        }
                        for r in new
                    ],
                )
            self._audit(
                s,
                actor,
                b.tenant,
                "batch.import",
                f"batch:{b.name}",
                added=len(new),
                unchanged=len(rows) - len(new),
            )
        return len(new)

    def export_batch(self, name: str, tenant: str | None = None) -> dict[str, Any]:
        """The batch and its devices as JSON (an import accepts it back: a restore)."""
        with self.transaction() as s:
            b = self._batch(s, name, tenant)
            devs = s.scalars(
                select(Device).where(Device.batch_id == b.id).order_by(Device.device_id)
            )
            rows = [
                {
                    "device_id": d.device_id,
                    "public_key": d.public_key.hex(),
                    "state": d.state,
                    "disabled": d.disabled,
                    "serial": d.serial,
                    "not_after": d.not_after,
                    "onboarded_at": d.onboarded_at,
                    "revoked_at": d.revoked_at,
                }
                for d in devs
            ]
            return {
                "format": EXPORT_FORMAT,
                "batch": {
                    "name": b.name,
                    "tenant": b.tenant,
                    "active": b.active,
                    "policy": b.policy,
                    "created_at": b.created_at,
                },
                "exported_at": time.time(),
                "devices": rows,
            }

    # -- devices -----------------------------------------------------------------------------
    def devices(
        self,
        tenant: str | None = None,
        batch: str | None = None,
        *,
        state: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[DeviceInfo]:
        """`state`: registered, onboarded or revoked (the lifecycle state), or disabled (the
        flag, whatever the state)."""
        if state not in (None, STATE_REGISTERED, STATE_ONBOARDED, STATE_REVOKED, "disabled"):
            raise RegistryError(
                f"state must be registered, onboarded, revoked or disabled, not {state!r}"
            )
        with self.transaction() as s:
            q = select(Device, Batch).join(Batch).order_by(Batch.name, Device.device_id)
            if tenant is not None:
                q = q.where(Batch.tenant == tenant)
            if batch is not None:
                q = q.where(Batch.name == batch)
            if state == "disabled":
                q = q.where(Device.disabled.is_(True))
            elif state is not None:
                q = q.where(Device.state == state)
            if limit is not None or offset:
                q = q.limit(limit).offset(offset)
            return [_device_info(d, b) for d, b in s.execute(q).all()]

    def denied_devices(self, policy: str) -> list[DeviceInfo]:
        """Disabled or revoked devices of batches with `policy`: the exceptions a broker must
        keep (applied again when the server starts)."""
        with self.transaction() as s:
            q = (
                select(Device, Batch)
                .join(Batch)
                .where(Batch.policy == policy)
                .where(or_(Device.disabled.is_(True), Device.state == STATE_REVOKED))
                .order_by(Device.device_id)
            )
            return [_device_info(d, b) for d, b in s.execute(q).all()]

    def device(self, device_id: str, tenant: str | None = None) -> DeviceInfo | None:
        # The onboarding hot path: straight on the DBAPI cursor (hotsql.py says why).
        with transaction(self.engine) as tx:
            if tenant is None:
                row = tx.first(self._hot.device, {"device_id": device_id})
            else:
                row = tx.first(
                    self._hot.device_of_tenant, {"device_id": device_id, "tenant": tenant}
                )
        return _device_row_info(row) if row else None

    def _device_row(self, s: Session, device_id: str, tenant: str | None) -> tuple[Device, Batch]:
        q = select(Device, Batch).join(Batch).where(Device.device_id == device_id)
        if tenant is not None:
            q = q.where(Batch.tenant == tenant)
        row = s.execute(q).first()
        if row is None:
            raise NotFound(f"device {device_id} does not exist; see: qlink devices")
        return row[0], row[1]

    def change_device(
        self,
        device_id: str,
        change: str,
        apply_policy: Callable[[DeviceInfo], None],
        *,
        tenant: str | None = None,
        actor: Actor = LOCAL,
    ) -> DeviceInfo:
        """`revoke`, `disable` or `enable` a device: the broker first (`apply_policy`, which may
        raise and then nothing changes here), then the registry with its audit event.

        Idempotent: repeating a change leaves the device as it is and logs nothing new.
        Revoking puts the current certificate on the CRL; a revoked device stays revoked.
        """
        if change in ("disable", "revoke"):
            # Committed before the broker hears of it: were this process to die after the deny
            # and before the change below, the device's next onboarding still clears the deny.
            mark = _D.update().where(_D.c.device_id == device_id).values(policy_exception=True)
            if tenant is not None:
                mark = mark.where(_D.c.batch_id.in_(select(_B.c.id).where(_B.c.tenant == tenant)))
            with self.engine.begin() as conn:
                conn.execute(mark)
        with self.transaction() as s:
            d, b = self._device_row(s, device_id, tenant)
            before = _device_info(d, b)
            if change == "enable" and d.state == STATE_REVOKED:
                raise Conflict(f"device {device_id} is revoked; a revoked device stays revoked")
            noop = (
                (change == "revoke" and d.state == STATE_REVOKED)
                or (change == "disable" and d.disabled)
                or (change == "enable" and not d.disabled)
            )
            if noop:
                return before
            apply_policy(before)
            now = time.time()
            if change == "revoke":
                if d.serial is not None and d.not_after is not None:
                    if s.get(Revoked, d.serial) is None:
                        s.add(
                            Revoked(
                                serial=d.serial,
                                device_id=device_id,
                                not_after=d.not_after,
                                revoked_at=now,
                            )
                        )
                d.state = STATE_REVOKED
                d.revoked_at = now
            else:
                d.disabled = change == "disable"
                if change == "enable":
                    d.policy_exception = False  # apply_policy removed the deny entry
            self._audit(
                s, actor, b.tenant, f"device.{change}", f"device:{device_id}", serial=d.serial
            )
            return _device_info(d, b)

    def revoked_certs(self, now: float | None = None) -> list[RevokedCert]:
        """Revoked certificates not yet expired (an expired one leaves the CRL, RFC 5280 3.3)."""
        now = time.time() if now is None else now
        with self.transaction() as s:
            q = select(Revoked).where(Revoked.not_after > now).order_by(Revoked.revoked_at)
            return [RevokedCert(int(r.serial, 16), r.revoked_at) for r in s.scalars(q)]

    def record_telemetry(
        self, device_id: str, payload: dict[str, Any], at: float, tenant: str
    ) -> bool:
        """Store the last telemetry of a known device of `tenant` (the tenant its topic names);
        False if there is no such device in that tenant."""
        in_tenant = select(Batch.id).where(Batch.tenant == tenant)
        with self.transaction() as s:
            result = s.execute(
                update(Device)
                .where(Device.device_id == device_id, Device.batch_id.in_(in_tenant))
                .values(last_seen=at, last_telemetry=json.dumps(payload, sort_keys=True))
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    # -- challenges --------------------------------------------------------------------------
    def add_challenge(
        self, cid: str, device_id: str, challenge: bytes, expires: int, purge_before: float = 0
    ) -> None:
        """Store a challenge; with `purge_before`, also drop those expired before it (at most
        once a minute: the purge is housekeeping, not part of each hello)."""
        now = time.monotonic()
        purge = bool(purge_before) and now - self._last_purge > _PURGE_EVERY_S
        with transaction(self.engine) as tx:
            if purge:
                self._last_purge = now
                tx.execute(self._hot.purge, {"before": purge_before})
            tx.execute(
                self._hot.add_challenge,
                {"id": cid, "device_id": device_id, "challenge": challenge, "expires": expires},
            )

    def challenge_with_device(self, cid: str) -> tuple[ChallengeInfo, DeviceInfo] | None:
        """A challenge and its device in one query (the proof's first read)."""
        with transaction(self.engine) as tx:
            m = tx.first(self._hot.challenge_device, {"id": cid})
        if m is None:
            return None
        challenge = ChallengeInfo(
            m["c_id"],
            m["device_id"],
            bytes(m["c_challenge"]),
            m["c_expires"],
            m["c_used_at"],
            m["c_hash"],
        )
        return challenge, _device_row_info(m)

    def complete_onboarding(
        self,
        cid: str,
        device_id: str,
        cert_der: bytes,
        serial: int,
        not_after: float,
        now: float,
        proof_hash: str | None = None,
        actor: Actor | None = None,
        policy_cleared: bool = False,
    ) -> bool:
        """Consume the challenge and mark the device onboarded in one transaction.

        `cert_der` is the device's (new or unchanged) certificate; the first onboarding time is
        kept. False when the challenge was consumed meanwhile (a concurrent replay) or the
        device left the registered/onboarded states; then nothing changes. `policy_cleared`: the
        policy driver registered the device, which removed any exception it held there.
        """
        serial_hex = format(serial, "x")
        hot = self._hot
        # The write comes first: on SQLite the transaction then starts as a writer, never as a
        # read snapshot that another worker's commit could make impossible to upgrade.
        with transaction(self.engine) as tx:
            if tx.execute(hot.use_challenge, {"cid": cid, "now": now, "hash": proof_hash}) != 1:
                tx.rollback()
                return False
            prior = tx.first(hot.prior, {"device_id": device_id})
            changed = tx.execute(
                hot.onboard_cleared if policy_cleared else hot.onboard,
                {
                    "did": device_id,
                    "b_cert_der": cert_der,
                    "b_serial": serial_hex,
                    "b_not_after": not_after,
                    "now": now,
                },
            )
            if changed != 1 or prior is None:
                tx.rollback()
                return False
            if prior["serial"] != serial_hex:
                who = actor or Actor(f"device:{device_id}", "-")
                tx.execute(
                    hot.audit,
                    {
                        "at": time.time(),
                        "actor": who.name[:128],
                        "source": who.source[:128],
                        "tenant": prior["tenant"],
                        "action": "device.onboard",
                        "target": f"device:{device_id}",
                        "detail": json.dumps({"serial": serial_hex}),
                    },
                )
            return True

    def purge_challenges(self, before: float) -> int:
        """Drop challenges that expired before `before` (used or not)."""
        with self.transaction() as s:
            r = s.execute(delete(Challenge).where(Challenge.expires < before))
            return int(r.rowcount)  # type: ignore[attr-defined]


# -- prebuilt Core statements of the onboarding hot path ----------------------------------------
_D = cast(Table, Device.__table__)
_B = cast(Table, Batch.__table__)
_C = cast(Table, Challenge.__table__)
_PURGE_EVERY_S = 60.0
_DEVICE_Q = (
    select(_D, _B.c.name.label("batch_name"), _B.c.tenant, _B.c.active, _B.c.policy)
    .join(_B, _D.c.batch_id == _B.c.id)
    .where(_D.c.device_id == bindparam("device_id"))
)
_CHALLENGE_DEVICE_Q = (
    select(
        _C.c.id.label("c_id"),
        _C.c.challenge.label("c_challenge"),
        _C.c.expires.label("c_expires"),
        _C.c.used_at.label("c_used_at"),
        _C.c.proof_hash.label("c_hash"),
        _D,
        _B.c.name.label("batch_name"),
        _B.c.tenant,
        _B.c.active,
        _B.c.policy,
    )
    .select_from(_C.join(_D, _C.c.device_id == _D.c.device_id).join(_B, _D.c.batch_id == _B.c.id))
    .where(_C.c.id == bindparam("id"))
)
_USE_CHALLENGE = (
    _C.update()
    .where(_C.c.id == bindparam("cid"), _C.c.used_at.is_(None))
    .values(used_at=bindparam("now"), proof_hash=bindparam("hash"))
)
_PRIOR_Q = (
    select(_D.c.serial, _B.c.tenant)
    .join(_B, _D.c.batch_id == _B.c.id)
    .where(_D.c.device_id == bindparam("device_id"))
)
_ONBOARD = (
    _D.update()
    .where(
        _D.c.device_id == bindparam("did"),
        _D.c.state.in_((STATE_REGISTERED, STATE_ONBOARDED)),
        _D.c.disabled.is_(False),
    )
    .values(
        state=STATE_ONBOARDED,
        cert_der=bindparam("b_cert_der"),
        serial=bindparam("b_serial"),
        not_after=bindparam("b_not_after"),
        onboarded_at=func.coalesce(_D.c.onboarded_at, bindparam("now")),
    )
)
_ONBOARD_CLEARED = _ONBOARD.values(policy_exception=False)
_PURGE_CHALLENGES = _C.delete().where(_C.c.expires < bindparam("before"))
_AUDIT_INSERT = cast(Table, AuditEvent.__table__).insert()
_AUDIT_KEYS = ("at", "actor", "source", "tenant", "action", "target", "detail")


class _HotPath:
    """The statements above compiled for one database, run on the DBAPI cursor (hotsql.py)."""

    def __init__(self, dialect: Dialect) -> None:
        self.device = Statement(_DEVICE_Q, dialect)
        self.device_of_tenant = Statement(
            _DEVICE_Q.where(_B.c.tenant == bindparam("tenant")), dialect
        )
        self.purge = Statement(_PURGE_CHALLENGES, dialect)
        self.add_challenge = Statement(
            _C.insert(), dialect, ("id", "device_id", "challenge", "expires")
        )
        self.challenge_device = Statement(_CHALLENGE_DEVICE_Q, dialect)
        self.use_challenge = Statement(_USE_CHALLENGE, dialect)
        self.prior = Statement(_PRIOR_Q, dialect)
        self.onboard = Statement(_ONBOARD, dialect)
        self.onboard_cleared = Statement(_ONBOARD_CLEARED, dialect)
        self.audit = Statement(_AUDIT_INSERT, dialect, _AUDIT_KEYS)


def _device_row_info(m: Mapping[str, Any]) -> DeviceInfo:
    # Raw rows: SQLite gives 0/1 for booleans, a driver may give memoryview for bytes.
    cert_der = m["cert_der"]
    return DeviceInfo(
        device_id=m["device_id"],
        public_key=bytes(m["public_key"]),
        batch=m["batch_name"],
        tenant=m["tenant"],
        batch_active=bool(m["active"]),
        state=m["state"],
        cert_der=None if cert_der is None else bytes(cert_der),
        serial=m["serial"],
        not_after=m["not_after"],
        onboarded_at=m["onboarded_at"],
        last_seen=m["last_seen"],
        last_telemetry=json.loads(m["last_telemetry"]) if m["last_telemetry"] else None,
        disabled=bool(m["disabled"]),
        revoked_at=m["revoked_at"],
        policy=m["policy"],
        policy_exception=bool(m["policy_exception"]),
    )


def _device_info(d: Device, b: Batch) -> DeviceInfo:
    return DeviceInfo(
        device_id=d.device_id,
        public_key=d.public_key,
        batch=b.name,
        tenant=b.tenant,
        batch_active=b.active,
        state=d.state,
        cert_der=d.cert_der,
        serial=d.serial,
        not_after=d.not_after,
        onboarded_at=d.onboarded_at,
        last_seen=d.last_seen,
        last_telemetry=json.loads(d.last_telemetry) if d.last_telemetry else None,
        disabled=d.disabled,
        revoked_at=d.revoked_at,
        policy=b.policy,
        policy_exception=d.policy_exception,
    )
