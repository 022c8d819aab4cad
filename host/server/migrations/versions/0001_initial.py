"""The registry: batches, devices, challenges, revoked certificates, operators, audit.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("policy", sa.String(32), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.UniqueConstraint("tenant", "name", name="uq_batches_tenant_name"),
    )
    op.create_index("ix_batches_tenant", "batches", ["tenant"])
    op.create_table(
        "devices",
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("public_key", sa.LargeBinary(65), nullable=False),
        sa.Column("batch_id", sa.Integer(), sa.ForeignKey("batches.id"), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("cert_der", sa.LargeBinary(), nullable=True),
        sa.Column("serial", sa.String(40), nullable=True),
        sa.Column("not_after", sa.Float(), nullable=True),
        sa.Column("onboarded_at", sa.Float(), nullable=True),
        sa.Column("revoked_at", sa.Float(), nullable=True),
        sa.Column("last_seen", sa.Float(), nullable=True),
        sa.Column("last_telemetry", sa.Text(), nullable=True),
    )
    op.create_index("ix_devices_batch_id", "devices", ["batch_id"])
    op.create_table(
        "challenges",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.device_id"), nullable=False),
        sa.Column("challenge", sa.LargeBinary(32), nullable=False),
        sa.Column("expires", sa.Integer(), nullable=False),
        sa.Column("used_at", sa.Float(), nullable=True),
        sa.Column("proof_hash", sa.String(64), nullable=True),
    )
    op.create_index("ix_challenges_device_id", "challenges", ["device_id"])
    op.create_index("ix_challenges_expires", "challenges", ["expires"])
    op.create_table(
        "revoked_certs",
        sa.Column("serial", sa.String(40), primary_key=True),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("not_after", sa.Float(), nullable=False),
        sa.Column("revoked_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_revoked_certs_device_id", "revoked_certs", ["device_id"])
    op.create_table(
        "operators",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("revoked_at", sa.Float(), nullable=True),
    )
    op.create_index("ix_operators_tenant", "operators", ["tenant"])
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("source", sa.String(128), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
    )
    op.create_index("ix_audit_action", "audit", ["action"])
    op.create_index("ix_audit_tenant_at", "audit", ["tenant", "at"])


def downgrade() -> None:
    for table in ("audit", "operators", "revoked_certs", "challenges", "devices", "batches"):
        op.drop_table(table)
