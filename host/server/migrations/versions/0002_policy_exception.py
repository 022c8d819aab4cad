"""devices.policy_exception: the broker may hold an exception (a deny entry) for the device.

Onboarding talks to a broker whose rights come from the certificate only when this is set.
Devices that existed before this column get it set: whatever an older server left at the broker
for them is cleared at their next onboarding.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "devices",
        sa.Column("policy_exception", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    devices = sa.table("devices", sa.column("policy_exception", sa.Boolean()))
    op.execute(devices.update().values(policy_exception=True))


def downgrade() -> None:
    op.drop_column("devices", "policy_exception")
