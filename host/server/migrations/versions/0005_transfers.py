"""Successor identities: each device's owner epoch, the link between a re-enrolled device's
records, and ownership transfers (docs/protocol.md "Successor identities").

`devices.epoch` is the owner epoch the device's identity belongs to (docs/identity.md "Seeds";
every device so far is at 0). `devices.predecessor` / `successor` link the records of one
device across a re-enrolment (same tenant); a transfer never sets them. `transfers` holds each
transfer code (only its SHA-256), its claim by the new owner, and the next identity once the
device has moved: the one place that knows both IDs of a transfer, read by no API.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "devices", sa.Column("epoch", sa.Integer(), nullable=False, server_default=sa.text("0"))
    )
    op.add_column("devices", sa.Column("predecessor", sa.String(64), nullable=True))
    op.add_column("devices", sa.Column("successor", sa.String(64), nullable=True))
    op.create_table(
        "transfers",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.device_id"), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("claim", sa.String(40), nullable=True),
        sa.Column("to_tenant", sa.String(64), nullable=True),
        sa.Column("to_batch_id", sa.Integer(), sa.ForeignKey("batches.id"), nullable=True),
        sa.Column("epoch", sa.Integer(), nullable=True),
        sa.Column("seq", sa.Integer(), nullable=True),
        sa.Column("claimed_at", sa.Float(), nullable=True),
        sa.Column("claimed_by", sa.String(128), nullable=True),
        sa.Column("successor", sa.String(64), nullable=True),
        sa.Column("completed_at", sa.Float(), nullable=True),
        sa.UniqueConstraint("code_hash", name="uq_transfers_code_hash"),
        sa.UniqueConstraint("claim", name="uq_transfers_claim"),
    )
    op.create_index("ix_transfers_device_id", "transfers", ["device_id"])
    op.create_index("ix_transfers_to_tenant", "transfers", ["to_tenant"])


def downgrade() -> None:
    op.drop_index("ix_transfers_to_tenant", "transfers")
    op.drop_index("ix_transfers_device_id", "transfers")
    op.drop_table("transfers")
    op.drop_column("devices", "successor")
    op.drop_column("devices", "predecessor")
    op.drop_column("devices", "epoch")
