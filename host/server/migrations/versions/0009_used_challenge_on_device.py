"""The used challenge moves onto the device's row, and two indexes leave out the NULLs.

A proof used to insert its challenge into `challenges` (a row and three index entries more in
the transaction that records the certificate, and a purge). Now the device row, which that
transaction updates anyway, holds the order of the last challenge a proof used and that proof's
digest (host/server/challenge.py). Challenge IDs given before this revision do not open any more
(their layout changed): a device that holds one gets `unknown_challenge` and says hello again,
so the old table goes without a carry-over.

`not_after` and `onboarded_at` are NULL until a device onboards; their indexes now hold only the
devices that have them, so a first onboarding adds an entry instead of moving one out of the
NULLs. Every query on them bounds the column, which the partial indexes serve.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_PARTIAL = ("not_after", "onboarded_at")


def upgrade() -> None:
    with op.batch_alter_table("devices") as b:
        b.add_column(sa.Column("used_challenge", sa.BigInteger(), nullable=True))
        b.add_column(sa.Column("used_proof", sa.String(64), nullable=True))
    for column in _PARTIAL:
        op.drop_index(f"ix_devices_{column}", "devices")
        where = sa.text(f"{column} IS NOT NULL")
        op.create_index(
            f"ix_devices_{column}",
            "devices",
            [column],
            sqlite_where=where,
            postgresql_where=where,
        )
    op.drop_index("ix_challenges_expires", "challenges")
    op.drop_index("ix_challenges_device_id", "challenges")
    op.drop_table("challenges")


def downgrade() -> None:
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
    for column in _PARTIAL:
        op.drop_index(f"ix_devices_{column}", "devices")
        op.create_index(f"ix_devices_{column}", "devices", [column])
    with op.batch_alter_table("devices") as b:
        b.drop_column("used_proof")
        b.drop_column("used_challenge")
