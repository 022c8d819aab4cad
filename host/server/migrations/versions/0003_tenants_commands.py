"""Tenants as records, and the command channel's commands.

`tenants` gets a row for every tenant that batches or operator tokens already name, and for
`default`, so a database from an older server keeps working. `commands` holds each command the
server signed for a device: its sequence number (per device, from 1), kind, arguments, expiry
and state (queued, delivered, done, failed, expired).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
    )
    now = time.time()
    conn = op.get_bind()
    names = {"default"}
    for sql in ("SELECT DISTINCT tenant FROM batches", "SELECT DISTINCT tenant FROM operators"):
        names.update(r[0] for r in conn.execute(sa.text(sql)))
    tenants = sa.table(
        "tenants",
        sa.column("name", sa.String()),
        sa.column("created_at", sa.Float()),
        sa.column("created_by", sa.String()),
    )
    op.bulk_insert(
        tenants, [{"name": n, "created_at": now, "created_by": "migration"} for n in sorted(names)]
    )
    op.create_table(
        "commands",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.device_id"), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("args", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.UniqueConstraint("device_id", "seq", name="uq_commands_device_seq"),
    )
    op.create_index("ix_commands_device_id", "commands", ["device_id"])
    op.create_index("ix_commands_state", "commands", ["state"])


def downgrade() -> None:
    op.drop_index("ix_commands_state", "commands")
    op.drop_index("ix_commands_device_id", "commands")
    op.drop_table("commands")
    op.drop_table("tenants")
