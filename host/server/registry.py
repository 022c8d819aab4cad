"""The registry: batches, devices and onboarding challenges in SQLite (WAL) via SQLAlchemy 2.

SQLite runs in WAL mode with a busy timeout, so the CLI can read and write while the server
runs. Device import is all-or-nothing: every row is checked first, and one bad row stores none.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    delete,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from host.server import ServerError

STATE_REGISTERED = "registered"
STATE_ONBOARDED = "onboarded"
STATE_REVOKED = "revoked"
_BUSY_TIMEOUT_MS = 10_000


class RegistryError(ServerError):
    pass


class Base(DeclarativeBase):
    pass


class Batch(Base):
    __tablename__ = "batches"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    tenant: Mapped[str] = mapped_column(String(64))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[float] = mapped_column(Float)


class Device(Base):
    __tablename__ = "devices"
    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary(65))
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), default=STATE_REGISTERED)
    cert_der: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    serial: Mapped[str | None] = mapped_column(String(40), nullable=True)
    not_after: Mapped[float | None] = mapped_column(Float, nullable=True)
    onboarded_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_seen: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_telemetry: Mapped[str | None] = mapped_column(Text, nullable=True)


class Challenge(Base):
    __tablename__ = "challenges"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"), index=True)
    challenge: Mapped[bytes] = mapped_column(LargeBinary(32))
    expires: Mapped[int] = mapped_column(Integer)
    used_at: Mapped[float | None] = mapped_column(Float, nullable=True)


# -- read models ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchInfo:
    name: str
    tenant: str
    active: bool
    devices: int


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

    def as_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "batch": self.batch,
            "tenant": self.tenant,
            "state": self.state,
            "serial": self.serial,
            "not_after": self.not_after,
            "onboarded_at": self.onboarded_at,
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


# -- import validation -----------------------------------------------------------------------
@dataclass(frozen=True)
class RowError:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


class ImportRejected(RegistryError):
    """At least one row is bad; nothing was imported."""

    def __init__(self, errors: list[RowError]) -> None:
        super().__init__(errors)
        self.errors = errors

    def __str__(self) -> str:
        rows = "; ".join(str(e) for e in self.errors)
        return f"{len(self.errors)} bad row(s), nothing imported: {rows}"


_HEX = frozenset("0123456789abcdef")


def public_key_error(pub: bytes) -> str | None:
    """Why `pub` is not an uncompressed P-256 point on the curve (SEC 1 2.3.4), or None."""
    if len(pub) != 65 or pub[0] != 0x04:
        return "public key must be 65 bytes starting with 04 (uncompressed point)"
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), pub)
    except ValueError:
        return "public key is not a point on the P-256 curve"
    return None


@dataclass(frozen=True)
class ImportRow:
    line: int
    device_id: str
    public_key: bytes


def parse_import(lines: Iterable[str]) -> tuple[list[ImportRow], list[RowError]]:
    """Check every `device_id,public_key_hex` row; blank lines and `#` comments are skipped."""
    rows: list[ImportRow] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}
    for n, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip().lower() for f in line.split(",")]
        if len(fields) != 2:
            errors.append(RowError(n, f"expected 2 fields device_id,public_key, got {len(fields)}"))
            continue
        device_id, key_hex = fields
        if len(device_id) != 64 or not set(device_id) <= _HEX:
            errors.append(RowError(n, "device ID must be 64 hex characters"))
            continue
        if len(key_hex) != 130 or not set(key_hex) <= _HEX:
            errors.append(RowError(n, "public key must be 130 hex characters"))
            continue
        pub = bytes.fromhex(key_hex)
        why = public_key_error(pub)
        if why:
            errors.append(RowError(n, why))
            continue
        if hashlib.sha256(pub).hexdigest() != device_id:
            errors.append(RowError(n, "device ID must equal SHA-256 of the public key"))
            continue
        if device_id in seen:
            errors.append(RowError(n, f"duplicate of line {seen[device_id]}"))
            continue
        seen[device_id] = n
        rows.append(ImportRow(n, device_id, pub))
    return rows, errors


class Registry:
    def __init__(self, db_path: Path) -> None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self.path = db_path
        self.engine: Engine = create_engine(f"sqlite:///{db_path}")
        event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self._sessions.begin() as s:
            yield s

    # -- batches -----------------------------------------------------------------------------
    def create_batch(self, name: str, tenant: str = "default") -> None:
        if not name or len(name) > 128 or "," in name:
            raise RegistryError("batch name must be 1..128 characters without commas")
        with self.transaction() as s:
            if s.scalar(select(Batch).where(Batch.name == name)) is not None:
                raise RegistryError(f"batch {name!r} already exists; pick another name")
            s.add(Batch(name=name, tenant=tenant, active=True, created_at=time.time()))

    def set_batch_active(self, name: str, active: bool) -> None:
        with self.transaction() as s:
            result = s.execute(update(Batch).where(Batch.name == name).values(active=active))
            if result.rowcount != 1:  # type: ignore[attr-defined]
                raise RegistryError(f"batch {name!r} does not exist; see: qlink batch list")

    def batches(self) -> list[BatchInfo]:
        with self.transaction() as s:
            counts = dict(
                s.execute(select(Device.batch_id, func.count()).group_by(Device.batch_id)).all()
            )
            return [
                BatchInfo(b.name, b.tenant, b.active, counts.get(b.id, 0))
                for b in s.scalars(select(Batch).order_by(Batch.name))
            ]

    def import_devices(self, batch: str, lines: Iterable[str]) -> int:
        """Add every row to `batch`, or none: raises ImportRejected naming each bad line."""
        rows, errors = parse_import(lines)
        with self.transaction() as s:
            b = s.scalar(select(Batch).where(Batch.name == batch))
            if b is None:
                raise RegistryError(
                    f"batch {batch!r} does not exist; create it first: qlink batch create {batch}"
                )
            ids = [r.device_id for r in rows]
            existing = set(s.scalars(select(Device.device_id).where(Device.device_id.in_(ids))))
            errors += [
                RowError(r.line, "device is already registered")
                for r in rows
                if r.device_id in existing
            ]
            if errors:
                errors.sort(key=lambda e: e.line)
                raise ImportRejected(errors)
            for r in rows:
                s.add(
                    Device(
                        device_id=r.device_id,
                        public_key=r.public_key,
                        batch_id=b.id,
                        state=STATE_REGISTERED,
                    )
                )
        return len(rows)

    # -- devices -----------------------------------------------------------------------------
    def devices(self) -> list[DeviceInfo]:
        with self.transaction() as s:
            q = select(Device, Batch).join(Batch).order_by(Batch.name, Device.device_id)
            return [_device_info(d, b) for d, b in s.execute(q).all()]

    def device(self, device_id: str) -> DeviceInfo | None:
        with self.transaction() as s:
            row = s.execute(
                select(Device, Batch).join(Batch).where(Device.device_id == device_id)
            ).first()
            return _device_info(row[0], row[1]) if row else None

    def record_telemetry(self, device_id: str, payload: dict[str, Any], at: float) -> bool:
        """Store the last telemetry of a known device; False if the device is unknown."""
        with self.transaction() as s:
            result = s.execute(
                update(Device)
                .where(Device.device_id == device_id)
                .values(last_seen=at, last_telemetry=json.dumps(payload, sort_keys=True))
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    # -- challenges --------------------------------------------------------------------------
    def add_challenge(self, cid: str, device_id: str, challenge: bytes, expires: int) -> None:
        with self.transaction() as s:
            s.add(Challenge(id=cid, device_id=device_id, challenge=challenge, expires=expires))

    def challenge(self, cid: str) -> ChallengeInfo | None:
        with self.transaction() as s:
            c = s.get(Challenge, cid)
            if c is None:
                return None
            return ChallengeInfo(c.id, c.device_id, c.challenge, c.expires, c.used_at)

    def complete_onboarding(
        self,
        cid: str,
        device_id: str,
        cert_der: bytes,
        serial: int,
        not_after: float,
        now: float,
    ) -> bool:
        """Consume the challenge and mark the device onboarded in one transaction.

        `cert_der` is the device's (new or unchanged) certificate; the first onboarding time is
        kept. False when the challenge was consumed meanwhile (a concurrent replay); then
        nothing changes.
        """
        with self.transaction() as s:
            used = s.execute(
                update(Challenge)
                .where(Challenge.id == cid, Challenge.used_at.is_(None))
                .values(used_at=now)
            )
            if used.rowcount != 1:  # type: ignore[attr-defined]
                s.rollback()
                return False
            s.execute(
                update(Device)
                .where(
                    Device.device_id == device_id,
                    Device.state.in_((STATE_REGISTERED, STATE_ONBOARDED)),
                )
                .values(
                    state=STATE_ONBOARDED,
                    cert_der=cert_der,
                    serial=format(serial, "x"),
                    not_after=not_after,
                    onboarded_at=func.coalesce(Device.onboarded_at, now),
                )
            )
            return True

    def purge_challenges(self, before: float) -> int:
        """Drop challenges that expired before `before` (used or not)."""
        with self.transaction() as s:
            r = s.execute(delete(Challenge).where(Challenge.expires < before))
            return int(r.rowcount)  # type: ignore[attr-defined]


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
    )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
