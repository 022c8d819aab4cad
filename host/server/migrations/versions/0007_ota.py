"""Over-the-air updates (docs/ota.md): releases, rollouts and each device's progress in one, and
the device's OTA key agreement public key.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as b:
        b.add_column(sa.Column("ota_key", sa.LargeBinary(65), nullable=True))
    op.create_table(
        "ota_releases",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("version", sa.String(20), nullable=False),
        sa.Column("min_version", sa.String(20), nullable=False),
        sa.Column("board", sa.String(32), nullable=False),
        sa.Column("files", sa.Integer(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("payload_size", sa.Integer(), nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column("published_at", sa.Float(), nullable=False),
        sa.Column("published_by", sa.String(128), nullable=False),
        sa.Column("bytes_served", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )
    op.create_table(
        "ota_rollouts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("release_id", sa.String(80), sa.ForeignKey("ota_releases.id"), nullable=False),
        sa.Column("batch_id", sa.Integer(), sa.ForeignKey("batches.id"), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("percent", sa.Integer(), nullable=False),
        sa.Column("max_failures", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_ota_rollouts_release_id", "ota_rollouts", ["release_id"])
    op.create_index("ix_ota_rollouts_batch_id", "ota_rollouts", ["batch_id"])
    op.create_table(
        "ota_rollout_devices",
        sa.Column("rollout_id", sa.Integer(), sa.ForeignKey("ota_rollouts.id"), primary_key=True),
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.device_id"), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("seq", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_ota_rollout_devices_device_id", "ota_rollout_devices", ["device_id"])


def downgrade() -> None:
    op.drop_index("ix_ota_rollout_devices_device_id", "ota_rollout_devices")
    op.drop_table("ota_rollout_devices")
    op.drop_index("ix_ota_rollouts_batch_id", "ota_rollouts")
    op.drop_index("ix_ota_rollouts_release_id", "ota_rollouts")
    op.drop_table("ota_rollouts")
    op.drop_table("ota_releases")
    with op.batch_alter_table("devices") as b:
        b.drop_column("ota_key")
