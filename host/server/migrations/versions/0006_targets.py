"""Broker targets, each batch's target, and the progress of moving a batch between targets.

`targets` holds the brokers that serve batches: `managed` (the server's own Mosquitto, made
here and in every database), external Mosquitto brokers and AWS IoT accounts the operator
adds. An external Mosquitto's admin password is not in the database: `secret` names its file
(mode 0600) under the data directory's `targets/`.

`batches.target` names each batch's target. Batches made before keep the broker they had:
policy `mosquitto` and `azure` batches get `managed` (an Azure batch's devices are sent to the
managed broker; Azure DPS gets an export), policy `aws` batches get `aws`, a target made here
for them without an endpoint, so their devices are still sent to the managed broker as before.

`moves` holds, per device, the last move of its batch: where it was, where it goes, and how
far it got (registered, commanded, moved, fell_back) with the `broker` command's seq.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "targets",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("host", sa.String(253), nullable=True),
        sa.Column("port", sa.Integer(), nullable=True),
        sa.Column("admin_port", sa.Integer(), nullable=True),
        sa.Column("ca_der", sa.LargeBinary(), nullable=True),
        sa.Column("admin_user", sa.String(128), nullable=True),
        sa.Column("secret", sa.String(128), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
    )
    conn = op.get_bind()
    aws = conn.execute(sa.text("SELECT 1 FROM batches WHERE policy = 'aws' LIMIT 1")).first()
    targets = sa.table(
        "targets",
        sa.column("name", sa.String()),
        sa.column("kind", sa.String()),
        sa.column("created_at", sa.Float()),
        sa.column("created_by", sa.String()),
    )
    rows = [("managed", "managed")] + ([("aws", "aws")] if aws else [])
    now = time.time()
    op.bulk_insert(
        targets,
        [{"name": n, "kind": k, "created_at": now, "created_by": "migration"} for n, k in rows],
    )
    op.add_column(
        "batches",
        sa.Column("target", sa.String(64), nullable=False, server_default="managed"),
    )
    op.execute("UPDATE batches SET target = 'aws' WHERE policy = 'aws'")
    op.create_table(
        "moves",
        sa.Column(
            "device_id",
            sa.String(64),
            sa.ForeignKey("devices.device_id"),
            primary_key=True,
        ),
        sa.Column("from_target", sa.String(64), nullable=False),
        sa.Column("to_target", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("moves")
    op.drop_column("batches", "target")
    op.drop_table("targets")
