"""The database's tables (SQLAlchemy 2 declarative): the schema migrations/ builds, checked
against it by tests/host/test_server_storage.py. A change here needs a new migration there and
the store's SQL (host/server/store) to follow; tests/host/test_store.py runs every statement of
the store on both databases.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from host.server.schemas import (
    ROLE_ADMIN,
    ROLE_OPERATOR,
    ROLE_VIEWER,
    ROLES,
    STATE_ONBOARDED,
    STATE_REGISTERED,
    STATE_REVOKED,
)

__all__ = [
    "ROLES",
    "ROLE_ADMIN",
    "ROLE_OPERATOR",
    "ROLE_VIEWER",
    "STATE_ONBOARDED",
    "STATE_REGISTERED",
    "STATE_REVOKED",
    "AuditEvent",
    "Base",
    "Batch",
    "Command",
    "ConsoleSession",
    "ConsoleUser",
    "Device",
    "Move",
    "Operator",
    "OtaRelease",
    "OtaRollout",
    "OtaRolloutDevice",
    "PufHealth",
    "Revoked",
    "Target",
    "TelemetrySample",
    "Tenant",
    "Transfer",
]


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    """A tenant: batches, operator tokens and devices belong to exactly one."""

    __tablename__ = "tenants"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(128))


class Batch(Base):
    __tablename__ = "batches"
    __table_args__ = (UniqueConstraint("tenant", "name", name="uq_batches_tenant_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    policy: Mapped[str] = mapped_column(String(32), default="mosquitto")
    created_at: Mapped[float] = mapped_column(Float)
    # The broker that serves its devices (a `targets` row; never deleted, so no foreign key).
    target: Mapped[str] = mapped_column(String(64), default="managed", server_default="managed")


class Target(Base):
    """A broker that serves batches (store/targets.py): the managed Mosquitto, an external
    Mosquitto or AWS IoT. An external Mosquitto's admin password is not here: `secret` names
    its file (0600) under the data directory's `targets/`."""

    __tablename__ = "targets"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # managed, mosquitto, aws
    host: Mapped[str | None] = mapped_column(String(253), nullable=True)
    port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    admin_port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    ca_der: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    admin_user: Mapped[str | None] = mapped_column(String(128), nullable=True)
    secret: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(128))


class Move(Base):
    """The last move of a device's batch to another target, and how far the device got
    (store/moves.py; docs/protocol.md "Moving a device to another broker")."""

    __tablename__ = "moves"
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"), primary_key=True)
    from_target: Mapped[str] = mapped_column(String(64))
    to_target: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))  # registered, commanded, moved, fell_back
    seq: Mapped[int | None] = mapped_column(Integer, nullable=True)  # its `broker` command
    updated_at: Mapped[float] = mapped_column(Float)


class Device(Base):
    __tablename__ = "devices"
    # The console's device list filters on each and pages by device ID (docs/console.md).
    __table_args__ = (
        Index("ix_devices_state_id", "state", "device_id"),
        Index("ix_devices_batch_id_id", "batch_id", "device_id"),
        Index("ix_devices_fw_id", "fw", "device_id"),
        # The live feed's counts of every tenant (Views.summaries), read from the index alone.
        Index("ix_devices_summary", "batch_id", "state", "online", "disabled"),
        # Only onboarded devices have these; a device's first onboarding then writes one entry
        # of each index instead of moving one out of the NULLs (the queries all bound them).
        *(
            Index(
                f"ix_devices_{column}",
                column,
                sqlite_where=text(f"{column} IS NOT NULL"),
                postgresql_where=text(f"{column} IS NOT NULL"),
            )
            for column in ("not_after", "onboarded_at")
        ),
    )
    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary(65))
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), default=STATE_REGISTERED)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # The broker may hold an exception for the device (a deny entry): set, and committed, before
    # a deny is sent; cleared once onboarding or enabling has removed it. A broker whose rights
    # come from the certificate is asked nothing at onboarding while this is unset.
    policy_exception: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    cert_der: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    serial: Mapped[str | None] = mapped_column(String(40), nullable=True)
    not_after: Mapped[float | None] = mapped_column(Float, nullable=True)
    onboarded_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_seen: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_telemetry: Mapped[str | None] = mapped_column(Text, nullable=True)
    # PUF health (store/puf.py): the largest decoder margin ever reported, and the share of
    # that budget the latest report has used (percent).
    puf_margin_max: Mapped[int | None] = mapped_column(Integer, nullable=True)
    puf_used_pct: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The owner epoch of this identity (docs/identity.md "Seeds"), and the records of the same
    # device before and after a re-enrolment (same tenant; a transfer never links records).
    epoch: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    predecessor: Mapped[str | None] = mapped_column(String(64), nullable=True)
    successor: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The device's OTA key agreement public key (docs/ota.md), sent in its proof; the private
    # key never leaves the device.
    ota_key: Mapped[bytes | None] = mapped_column(LargeBinary(65), nullable=True)
    # Connected to its broker: set by its `online` event, cleared when the broker reports the
    # connection closed or the device is revoked, disabled or decommissioned.
    online: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    fw: Mapped[str | None] = mapped_column(String(20), nullable=True)  # from its telemetry
    # When anything the console shows of the device last changed (the live view's cursor).
    changed_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    # The order of the last challenge a proof used (host/server/challenge.py: its ID's expiry
    # and nonce), and that proof's SHA-256: a proof must use a challenge that orders after it,
    # and the same proof sent again gets the same answer (store/challenges.py).
    used_challenge: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    used_proof: Mapped[str | None] = mapped_column(String(64), nullable=True)


class TelemetrySample(Base):
    """The last telemetry messages of a device: slot = seq modulo 64, one upsert per message."""

    __tablename__ = "telemetry_samples"
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"), primary_key=True)
    slot: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(Float)
    body: Mapped[str] = mapped_column(Text)  # the message, JSON


class Command(Base):
    """A command the server signed for a device (docs/protocol.md "Command channel")."""

    __tablename__ = "commands"
    __table_args__ = (UniqueConstraint("device_id", "seq", name="uq_commands_device_seq"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"), index=True)
    tenant: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(Integer)  # per device, from 1
    kind: Mapped[str] = mapped_column(String(32))
    args: Mapped[str] = mapped_column(Text, default="{}")  # JSON object
    state: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    actor: Mapped[str] = mapped_column(String(128))


class PufHealth(Base):
    """What a device reported of its PUF at a session's start (bounded per device)."""

    __tablename__ = "puf_health"
    __table_args__ = (Index("ix_puf_health_device_at", "device_id", "at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"))
    at: Mapped[float] = mapped_column(Float)
    margin: Mapped[int | None] = mapped_column(Integer, nullable=True)
    corrected_bits: Mapped[int | None] = mapped_column(Integer, nullable=True)
    health_failures: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Transfer(Base):
    """An ownership transfer: the code (only its SHA-256), its claim, and the next identity once
    the device moved (store/transfers.py). No API reads both IDs of a row."""

    __tablename__ = "transfers"
    __table_args__ = (
        UniqueConstraint("code_hash", name="uq_transfers_code_hash"),
        UniqueConstraint("claim", name="uq_transfers_claim"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code_hash: Mapped[str] = mapped_column(String(64))
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"), index=True)
    tenant: Mapped[str] = mapped_column(String(64))  # the current owner's
    state: Mapped[str] = mapped_column(String(16))  # open, replaced, claimed, void, done
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(128))
    claim: Mapped[str | None] = mapped_column(String(40), nullable=True)  # the claim handle
    to_tenant: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    to_batch_id: Mapped[int | None] = mapped_column(ForeignKey("batches.id"), nullable=True)
    epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    seq: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the transfer command's
    claimed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    successor: Mapped[str | None] = mapped_column(String(64), nullable=True)
    completed_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class OtaRelease(Base):
    """A published firmware release (docs/ota.md "Release"); its files live under the data
    directory's releases/<id>/."""

    __tablename__ = "ota_releases"
    id: Mapped[str] = mapped_column(String(80), primary_key=True)  # "<board>-<version>"
    version: Mapped[str] = mapped_column(String(20))
    min_version: Mapped[str] = mapped_column(String(20))
    board: Mapped[str] = mapped_column(String(32))
    files: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(Integer)  # plaintext bytes, all files
    payload_size: Mapped[int] = mapped_column(Integer)  # encrypted payload.bin bytes
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    published_at: Mapped[float] = mapped_column(Float)
    published_by: Mapped[str] = mapped_column(String(128))
    bytes_served: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


class OtaRollout(Base):
    """A release offered to a share of a batch (docs/ota.md "Rollout")."""

    __tablename__ = "ota_rollouts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    release_id: Mapped[str] = mapped_column(ForeignKey("ota_releases.id"), index=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"), index=True)
    tenant: Mapped[str] = mapped_column(String(64))
    percent: Mapped[int] = mapped_column(Integer)
    max_failures: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))  # active, paused, halted, aborted, done
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)  # why it halted
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[float] = mapped_column(Float)


class OtaRolloutDevice(Base):
    """One device's progress in a rollout: offered, downloading, staged, trial, committed,
    rolled_back or refused (with the device's reason)."""

    __tablename__ = "ota_rollout_devices"
    rollout_id: Mapped[int] = mapped_column(ForeignKey("ota_rollouts.id"), primary_key=True)
    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.device_id"), primary_key=True, index=True
    )
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seq: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the ota command's
    updated_at: Mapped[float] = mapped_column(Float, index=True)


class Revoked(Base):
    """Every certificate ever revoked (the CRL's source); kept when a device is re-issued."""

    __tablename__ = "revoked_certs"
    serial: Mapped[str] = mapped_column(String(40), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    not_after: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float] = mapped_column(Float)


class Operator(Base):
    """An operator API token: only its SHA-256 is stored (the token is 256 random bits)."""

    __tablename__ = "operators"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(128))
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class ConsoleUser(Base):
    """A person who signs in to the web console (docs/console.md "Users and sessions")."""

    __tablename__ = "console_users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    tenant: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(200))  # argon2id
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(128))
    failed_logins: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    locked_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    disabled_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class ConsoleSession(Base):
    """A console session: only the SHA-256 of its cookie is stored."""

    __tablename__ = "console_sessions"
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("console_users.id"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(128))


class AuditEvent(Base):
    __tablename__ = "audit"
    __table_args__ = (Index("ix_audit_tenant_at", "tenant", "at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(128))
    tenant: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(200))
    detail: Mapped[str] = mapped_column(Text, default="{}")
