"""The web console (docs/console.md): its users and their sessions, what the live view and the
device list read (presence, firmware version, last change, a bounded telemetry history), and the
indexes that keep the list and the dashboard fast at 100,000 devices.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_users",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(200), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        # Consecutive failed logins, and until when the account refuses every login.
        sa.Column("failed_logins", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("locked_until", sa.Float(), nullable=True),
        sa.Column("disabled_at", sa.Float(), nullable=True),
    )
    op.create_table(
        "console_sessions",
        # SHA-256 of the cookie's value: the database never holds a usable session.
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("console_users.id"), nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.Column("source", sa.String(128), nullable=False),
    )
    op.create_index("ix_console_sessions_user_id", "console_sessions", ["user_id"])
    with op.batch_alter_table("devices") as b:
        # Connected to its broker: set by its `online` event, cleared when the broker reports
        # the connection gone (the qlink plugin) or the device is revoked.
        b.add_column(sa.Column("online", sa.Boolean(), nullable=False, server_default=sa.false()))
        b.add_column(sa.Column("fw", sa.String(20), nullable=True))  # from its telemetry
        # When anything the console shows of the device last changed (the live view's cursor).
        b.add_column(sa.Column("changed_at", sa.Float(), nullable=True))
    op.create_index("ix_devices_changed_at", "devices", ["changed_at"])
    op.create_index("ix_devices_state_id", "devices", ["state", "device_id"])
    op.create_index("ix_devices_batch_id_id", "devices", ["batch_id", "device_id"])
    op.create_index("ix_devices_fw_id", "devices", ["fw", "device_id"])
    op.create_index("ix_devices_not_after", "devices", ["not_after"])
    op.create_index("ix_devices_onboarded_at", "devices", ["onboarded_at"])
    # The live feed's counts of every tenant in one grouped read of this index alone.
    op.create_index("ix_devices_summary", "devices", ["batch_id", "state", "online", "disabled"])
    # The last telemetry messages of each device, one slot per seq modulo the slot count: an
    # upsert per message keeps the history bounded without a pruning pass.
    op.create_table(
        "telemetry_samples",
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.device_id"), primary_key=True),
        sa.Column("slot", sa.Integer(), primary_key=True),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
    )
    op.create_index("ix_audit_at", "audit", ["at"])
    # The live feed's cursor on rollout pages: what changed in a rollout since its last look.
    op.create_index("ix_ota_rollout_devices_updated_at", "ota_rollout_devices", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_ota_rollout_devices_updated_at", "ota_rollout_devices")
    op.drop_index("ix_audit_at", "audit")
    op.drop_table("telemetry_samples")
    for name in (
        "ix_devices_summary",
        "ix_devices_onboarded_at",
        "ix_devices_not_after",
        "ix_devices_fw_id",
        "ix_devices_batch_id_id",
        "ix_devices_state_id",
        "ix_devices_changed_at",
    ):
        op.drop_index(name, "devices")
    with op.batch_alter_table("devices") as b:
        b.drop_column("changed_at")
        b.drop_column("fw")
        b.drop_column("online")
    op.drop_index("ix_console_sessions_user_id", "console_sessions")
    op.drop_table("console_sessions")
    op.drop_table("console_users")
