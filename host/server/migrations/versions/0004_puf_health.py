"""PUF health history: what each device reported of its PUF at the start of its sessions.

Kept bounded per device (the newest rows; store/puf.py trims in the same transaction), with the
largest decoder margin the device ever reported on its record, so the share of the correction
budget it has used stays known when old rows are gone.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "puf_health",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.device_id"), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("margin", sa.Integer(), nullable=True),
        sa.Column("corrected_bits", sa.Integer(), nullable=True),
        sa.Column("health_failures", sa.Integer(), nullable=True),
    )
    op.create_index("ix_puf_health_device_at", "puf_health", ["device_id", "at"])
    op.add_column("devices", sa.Column("puf_margin_max", sa.Integer(), nullable=True))
    op.add_column("devices", sa.Column("puf_used_pct", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("devices", "puf_used_pct")
    op.drop_column("devices", "puf_margin_max")
    op.drop_index("ix_puf_health_device_at", "puf_health")
    op.drop_table("puf_health")
